//! The real `workpool-operator` binary against the test cluster, with worker pods as
//! containers on the real node and a real redis-server: pools drain tasks, follow
//! `replicas` and the scale subresource, report their queue, and clean up on deletion.
#![forbid(unsafe_code)]

mod operator_support;

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use operator_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_of_several_pools_drain_their_tasks() {
    let env = Env::start().await;
    let op = Operator::start(&env.cluster, "op-drain", &[]);
    env.apply_pool(&env.exec_pool("alpha", 3, 0.05, json!({})))
        .await;
    env.apply_pool(&env.exec_pool(
        "beta",
        2,
        0.05,
        json!({"queue": {"redis": {"stream": "beta-tasks", "group": "beta-workers"}}}),
    ))
    .await;
    let a = payloads("alpha", 40);
    let b = payloads("beta", 30);
    env.submit("alpha", &a);
    env.submit("beta-tasks", &b);

    let alpha = env.wait_ready("alpha", 3).await;
    env.wait_ready("beta", 2).await;
    env.wait_done("alpha", &a, T).await;
    env.wait_done("beta", &b, T).await;

    // Status: selector, queue, conditions with reasons, observedGeneration.
    let s = &alpha["status"];
    assert_eq!(s["selector"], "workpool.dev/pool=alpha");
    assert_eq!(s["observedGeneration"], alpha["metadata"]["generation"]);
    for c in ["Ready", "QueueReachable", "Degraded", "Scaling"] {
        let c = cond(&alpha, c).unwrap_or_else(|| panic!("condition {c} missing: {s}"));
        assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
        assert!(c["lastTransitionTime"].is_string(), "{c}");
    }
    assert_eq!(
        cond_status(&alpha, "QueueReachable").as_deref(),
        Some("True")
    );
    assert_eq!(cond_status(&alpha, "Degraded").as_deref(), Some("False"));
    assert_eq!(cond_status(&alpha, "Scaling").as_deref(), Some("False"));

    // The queue drains to zero and the status says so.
    env.wait_pool("alpha", "an empty backlog", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
    })
    .await;
    env.wait_pool("beta", "an empty backlog", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
    })
    .await;

    // Consumers are named like the pods (a worker registers with its first task);
    // every task ran exactly once here.
    let pods = env.pool_pods("alpha", false).await;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let consumers = env.consumers("alpha", "alpha");
    assert!(!consumers.is_empty());
    for c in consumers.keys() {
        assert!(
            names.contains(c),
            "consumer {c} is not a pod of the pool: {names:?}"
        );
    }
    let beta_pods: Vec<String> = env
        .pool_pods("beta", false)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for c in env.consumers("beta-tasks", "beta-workers").keys() {
        assert!(beta_pods.contains(c), "{c} not in {beta_pods:?}");
    }
    let lines = env.done_lines("alpha");
    assert_eq!(lines.len(), a.len(), "no task ran twice without a failure");
    assert_eq!(
        env.redis_cli(&["XLEN", "alpha"]).trim(),
        "0",
        "acked tasks are deleted"
    );

    // Pods: labels, owner reference, env injected, the URL as a plain value here.
    let pod = &pods[0];
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["workpool.dev/pool"], "alpha");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "workpool-operator");
    assert_eq!(labels["app.kubernetes.io/instance"], "alpha");
    let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(owner.kind, "WorkPool");
    assert_eq!(
        Some(owner.uid.clone()),
        alpha["metadata"]["uid"].as_str().map(String::from)
    );
    let spec = serde_json::to_value(pod.spec.clone().unwrap_or_default()).unwrap_or_default();
    let env_names: Vec<&str> = spec["containers"][0]["env"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    for n in [
        "WORKPOOL_REDIS_URL",
        "WORKPOOL_STREAM",
        "WORKPOOL_GROUP",
        "WORKPOOL_CONSUMER",
        "WORKPOOL_VISIBILITY_TIMEOUT",
        "WORKPOOL_MAX_DELIVERIES",
    ] {
        assert!(env_names.contains(&n), "{n} missing in {env_names:?}");
    }
    // No deadLetterStream in the spec: the worker derives each partition's dead-letter
    // stream itself (`<stream>:dead`, hash-tagged on Cluster), so none is passed.
    assert!(
        !env_names.contains(&"WORKPOOL_DEAD_LETTER_STREAM"),
        "{env_names:?}"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );

    // Metrics, labelled by namespace and pool.
    let ns = env.ns.clone();
    let series = |m: &str, p: &str| format!("{m}{{namespace=\"{ns}\",workpool=\"{p}\"}}");
    let (code, body) = op.get("/metrics").await.expect("metrics answer");
    assert_eq!(code, 200);
    assert_eq!(
        metric_value(&body, &series("workpool_desired_replicas", "alpha")),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, &series("workpool_ready_replicas", "beta")),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, &series("workpool_queue_up", "alpha")),
        Some(1.0),
        "{body}"
    );
    assert!(metric_value(&body, "workpool_reconcile_duration_seconds_count").unwrap_or(0.0) > 0.0);
    assert_eq!(metric_value(&body, "workpool_leader"), Some(1.0));
    assert_eq!(op.get("/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_subresource_scales_up_and_down_removing_idle_pods_first() {
    let env = Env::start().await;
    let op = Operator::start(&env.cluster, "op-scale", &[]);
    // A task whose payload says "long" keeps its worker busy for a while.
    let script = format!(
        "p=$(cat); case \"$p\" in *long*) sleep 60;; esac; printf '%s\\n' \"$p\" >> {}",
        env.done_file_in_pod("scaled")
    );
    env.apply_pool(&env.script_pool(
        "scaled",
        1,
        &script,
        json!({"delivery": {"visibilityTimeoutSeconds": 120}}),
    ))
    .await;
    env.wait_ready("scaled", 1).await;

    // kubectl scale goes through the scale subresource.
    let pools = env.pools();
    let scale = json!({"spec": {"replicas": 4}});
    pools
        .patch_scale("scaled", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scale up");
    env.wait_ready("scaled", 4).await;
    let sc = pools.get_scale("scaled").await.expect("scale");
    assert_eq!(sc.status.as_ref().map(|s| s.replicas), Some(4));
    assert_eq!(
        sc.status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .as_deref(),
        Some("workpool.dev/pool=scaled")
    );

    // One worker holds a long task; scaling to 1 keeps it and removes the idle ones.
    env.submit("scaled", &["{\"task\":\"long\"}".to_string()]);
    let busy = eventually("a busy worker", T, || async {
        env.consumers("scaled", "scaled")
            .into_iter()
            .find(|(_, pending)| *pending > 0)
            .map(|(name, _)| name)
    })
    .await;
    pools
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale down");
    env.wait_ready("scaled", 1).await;
    // The idle pods drain (they hold nothing, so they go as soon as they said so).
    let left = eventually("the idle pods gone", T, || async {
        let pods = env.pool_pods("scaled", false).await;
        (pods.len() == 1).then_some(pods)
    })
    .await;
    assert_eq!(
        left[0].metadata.name.as_deref(),
        Some(busy.as_str()),
        "the busy pod stays while idle ones go"
    );
    let v = env.pool("scaled").await.expect("pool");
    assert_eq!(v["status"]["busyReplicas"], 1, "{}", v["status"]);
    let ns = env.ns.clone();
    let up = format!(
        "workpool_scale_events_total{{direction=\"up\",namespace=\"{ns}\",workpool=\"scaled\"}}"
    );
    let down = format!(
        "workpool_scale_events_total{{direction=\"down\",namespace=\"{ns}\",workpool=\"scaled\"}}"
    );
    let body = op.get("/metrics").await.expect("metrics").1;
    assert!(metric_value(&body, &up).unwrap_or(0.0) >= 2.0, "{body}");
    assert!(metric_value(&body, &down).unwrap_or(0.0) >= 1.0, "{body}");
    let pool = env.pool("scaled").await.expect("pool");
    assert!(pool["status"]["lastScaleTime"].is_string());

    // Scale to zero and back.
    pools
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to zero");
    let v = env
        .wait_pool("scaled", "zero pods", T, |v| {
            v["status"]["replicas"] == json!(0)
        })
        .await;
    assert_eq!(
        cond(&v, "Ready").map(|c| c["reason"].clone()),
        Some(json!("ScaledToZero"))
    );
    // The busy pod drains: it finishes its long task before it goes, nothing is cut.
    eventually("the pods are gone", T, || async {
        env.pool_pods("scaled", true).await.is_empty().then_some(())
    })
    .await;
    assert!(
        env.done_lines("scaled").iter().any(|l| l.contains("long")),
        "the long task finished on its draining pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_pool_removes_its_pods_and_consumers_but_keeps_the_stream() {
    let env = Env::start().await;
    let op = Operator::start(&env.cluster, "op-delete", &[]);
    env.apply_pool(&env.exec_pool("doomed", 2, 0.0, json!({})))
        .await;
    let tasks = payloads("doomed", 10);
    env.submit("doomed", &tasks);
    env.wait_ready("doomed", 2).await;
    env.wait_done("doomed", &tasks, T).await;
    let pool = env.pool("doomed").await.expect("pool");
    assert!(
        pool["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("workpool.dev/cleanup"))),
        "{pool}"
    );
    eventually("consumers registered", T, || async {
        // A worker appears as a consumer once it was handed a task (Redis 7.0).
        (!env.consumers("doomed", "doomed").is_empty()).then_some(())
    })
    .await;
    // Tasks added after the last read stay in the stream for whoever comes next.
    env.submit("doomed", &["{\"task\":\"later\"}".to_string()]);

    env.pools()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete pool");
    eventually("the pool is gone", T, || async {
        env.pool("doomed").await.is_none().then_some(())
    })
    .await;
    eventually("its pods are gone", T, || async {
        env.pool_pods("doomed", true).await.is_empty().then_some(())
    })
    .await;
    let consumers = env.consumers("doomed", "doomed");
    assert!(consumers.is_empty(), "consumers left: {consumers:?}");
    assert_eq!(
        env.redis_cli(&["EXISTS", "doomed"]).trim(),
        "1",
        "the stream stays"
    );
    let groups = env.redis_cli(&["XINFO", "GROUPS", "doomed"]);
    assert!(groups.contains("doomed"), "the group stays: {groups}");
    // Its metric series are gone.
    let body = op.get("/metrics").await.expect("metrics").1;
    assert!(!body.contains("workpool=\"doomed\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_then_back_flips_queue_reachable() {
    let mut env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-redis", &[]);
    env.apply_pool(&env.exec_pool("flaky", 1, 0.0, json!({})))
        .await;
    env.wait_ready("flaky", 1).await;
    env.wait_pool("flaky", "QueueReachable=True", T, |v| {
        cond_status(v, "QueueReachable").as_deref() == Some("True")
    })
    .await;

    env.redis.stop();
    let v = env
        .wait_pool("flaky", "QueueReachable=False", T, |v| {
            cond_status(v, "QueueReachable").as_deref() == Some("False")
        })
        .await;
    let c = cond(&v, "QueueReachable").expect("condition");
    assert_eq!(c["reason"], "Unreachable", "{c}");
    assert!(
        v["status"]["queue"].is_null(),
        "no stale queue numbers: {}",
        v["status"]
    );
    // Pods are not touched while the queue cannot be read.
    assert_eq!(v["status"]["replicas"], 1);

    env.redis.restart().expect("redis restarts");
    env.wait_pool("flaky", "QueueReachable=True again", T, |v| {
        cond_status(v, "QueueReachable").as_deref() == Some("True")
            && v["status"]["queue"].is_object()
    })
    .await;
    // The workers reconnect and work again.
    let t = payloads("flaky", 5);
    env.submit("flaky", &t);
    env.wait_done("flaky", &t, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_with_a_missing_secret_is_reported_and_a_secret_url_never_lands_in_the_pod() {
    let env = Env::start().await;
    let op = Operator::start(&env.cluster, "op-secret", &[]);
    let pool = env.exec_pool(
        "secretive",
        1,
        0.0,
        json!({"queue": {"redis": {"url": null, "urlSecretRef": {"name": "redis-url", "key": "url"}}}}),
    );
    env.apply_pool(&pool).await;
    let v = env
        .wait_pool("secretive", "QueueReachable=False", T, |v| {
            cond_status(v, "QueueReachable").as_deref() == Some("False")
        })
        .await;
    let c = cond(&v, "QueueReachable").expect("condition");
    assert_eq!(c["reason"], "SecretUnavailable", "{c}");
    assert!(
        c["message"].as_str().unwrap_or("").contains("redis-url"),
        "{c}"
    );

    // The Secret appears: the queue is read, workers get the URL through secretKeyRef.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-url", "namespace": env.ns},
        "stringData": {"url": env.redis_url()}
    });
    env.cluster.apply_object(&secret).await.expect("secret");
    env.wait_ready("secretive", 1).await;
    env.wait_pool("secretive", "QueueReachable=True", T, |v| {
        cond_status(v, "QueueReachable").as_deref() == Some("True")
    })
    .await;
    let t = payloads("secretive", 3);
    env.submit("secretive", &t);
    env.wait_done("secretive", &t, T).await;
    let pod = &env.pool_pods("secretive", false).await[0];
    let text = serde_json::to_string(pod).unwrap_or_default();
    assert!(
        !text.contains(&env.redis_url()),
        "the URL is copied into the pod: {text}"
    );
    assert!(text.contains("secretKeyRef"), "{text}");
    let pool = env.pool("secretive").await.expect("pool");
    assert!(!pool.to_string().contains(&env.redis_url()));
    assert!(
        !op.log_text().contains(&env.redis_url()),
        "the URL is in the operator's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_written_while_nothing_changes() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-quiet", &[]);
    env.apply_pool(&env.exec_pool("quiet", 2, 0.0, json!({})))
        .await;
    env.wait_ready("quiet", 2).await;
    // Some work, so that both workers register as consumers; then let it settle.
    let t = payloads("quiet", 6);
    env.submit("quiet", &t);
    env.wait_done("quiet", &t, T).await;
    // Queue figures alone reach the status at most every 15 s: wait until it shows the
    // queue as it now stays (empty, with every consumer that registered).
    let consumers = env.consumers("quiet", "quiet").len();
    env.wait_pool("quiet", "an empty queue with its consumers", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
            && v["status"]["queue"]["consumers"] == json!(consumers)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = env.pool("quiet").await.expect("pool");
    let pods_before: Vec<(Option<String>, Option<String>)> = env
        .pool_pods("quiet", true)
        .await
        .iter()
        .map(|p| (p.metadata.name.clone(), p.metadata.resource_version.clone()))
        .collect();
    let events =
        kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), &env.ns);
    let n_events = events
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    // Several poll intervals (1 s here) and reconciles pass.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = env.pool("quiet").await.expect("pool");
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "the pool was written in steady state:\n{}\n{}",
        before["status"], after["status"]
    );
    let pods_after: Vec<(Option<String>, Option<String>)> = env
        .pool_pods("quiet", true)
        .await
        .iter()
        .map(|p| (p.metadata.name.clone(), p.metadata.resource_version.clone()))
        .collect();
    assert_eq!(pods_before, pods_after);
    let operator_events = events
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    assert_eq!(
        n_events, operator_events,
        "events keep coming in steady state"
    );
}

/// `examples/*.yaml` as a user applies them, in the test's namespace.
fn example(path: &std::path::Path, ns: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("example");
    let mut v: serde_json::Value = serde_yaml::from_str(&text).expect("example yaml");
    v["metadata"]["namespace"] = json!(ns);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_examples_run_and_drain_their_tasks() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-examples", &[]);
    env.cluster
        .apply_object(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "workpool-redis", "namespace": env.ns},
            "stringData": {"url": env.redis_url()}
        }))
        .await
        .expect("secret");
    let dir = workpool_tests::cluster::repo_root().join("examples");
    for name in ["sleep-pool.yaml", "script-pool.yaml"] {
        env.apply_pool(&example(&dir.join(name), &env.ns)).await;
    }
    env.wait_ready("sleepy", 2).await;
    env.wait_ready("shout", 1).await;
    let sleeps: Vec<String> = (0..20).map(|_| "{\"ms\": 50}".to_string()).collect();
    env.submit("sleepy", &sleeps);
    env.submit("words", &payloads("word", 5));
    for (pool, stream, group) in [
        ("sleepy", "sleepy", "sleepy"),
        ("shout", "words", "shouters"),
    ] {
        env.wait_pool(pool, "its tasks drained", T, |v| {
            v["status"]["queue"]["backlog"] == json!(0)
                && v["status"]["queue"]["consumers"].as_i64() > Some(0)
        })
        .await;
        assert_eq!(
            env.redis_cli(&["XLEN", stream]).trim(),
            "0",
            "{pool}: tasks left"
        );
        assert_eq!(
            env.redis_cli(&["XLEN", &format!("{stream}:dead")]).trim(),
            "0",
            "{pool}: dead letters"
        );
        assert!(!env.consumers(stream, group).is_empty());
    }
}

/// A worker pod made by hand (no operator): the real `workpool-worker` in the worker
/// image consumes tasks from a real redis-server, is Ready through its `/readyz` probe,
/// registers as the consumer named by the downward API, and on deletion drains and exits
/// 0 on SIGTERM well inside its 30 s grace period (not killed at the end of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_pod_consumes_tasks_is_ready_through_readyz_and_drains_on_deletion() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher;
    let env = Env::start().await;
    let out = env.done_file_in_pod("solo");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker-0", "labels": {"workpool.dev/pool": "solo"}},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "worker",
                "image": worker_image(),
                "args": ["run"],
                "ports": [{"name": "metrics", "containerPort": 9090}],
                "env": [
                    {"name": "WORKPOOL_REDIS_URL", "value": env.redis_url()},
                    {"name": "WORKPOOL_STREAM", "value": "tasks"},
                    {"name": "WORKPOOL_GROUP", "value": "demo"},
                    {"name": "WORKPOOL_CONSUMER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"},
                    {"name": "WORKPOOL_EXEC", "value": format!("cat >> {out}; echo >> {out}")},
                    {"name": "WORKPOOL_CONCURRENCY", "value": "1"}
                ],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 2},
                "volumeMounts": [{"name": "out", "mountPath": OUT_IN_POD}]
            }],
            "volumes": [{"name": "out", "hostPath": {
                "path": env.out_dir().display().to_string(), "type": "Directory"
            }}]
        }
    }))
    .expect("pod json");
    let pods = env.pods();
    pods.create(&Default::default(), &pod)
        .await
        .expect("create");
    let running = eventually("worker-0 Running and Ready", T, || async {
        pods.get_opt("worker-0")
            .await
            .ok()
            .flatten()
            .filter(pod_ready)
    })
    .await;
    let status = running
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == "worker"))
        .expect("worker status");
    assert_eq!(status.restart_count, 0);

    // Tasks produced with the real CLI all run.
    let tasks: Vec<String> = (0..20).map(|i| format!("{{\"n\":{i}}}")).collect();
    env.submit("tasks", &tasks);
    env.wait_done("solo", &tasks, T).await;
    // The consumer in the group is the pod's name (downward API).
    assert!(
        env.consumers("tasks", "demo").contains_key("worker-0"),
        "{:?}",
        env.consumers("tasks", "demo")
    );

    // Deletion: every status the kubelet reports is seen, up to the pod's removal.
    let pid = env
        .node
        .container_pid(status.container_id.as_deref().expect("container id"))
        .expect("the worker's process");
    let events = watcher(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=worker-0"),
    );
    let mut events = Box::pin(events);
    // The watch is established (its first listing done) before the delete.
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(_) => continue,
            None => panic!("the watch ended"),
        }
    }
    let started = std::time::Instant::now();
    pods.delete("worker-0", &DeleteParams::default())
        .await
        .expect("delete");
    let mut exit_codes = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) => exit_codes.extend(
                    p.status
                        .and_then(|s| s.container_statuses)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|c| c.state.and_then(|s| s.terminated))
                        .map(|t| t.exit_code),
                ),
                Ok(watcher::Event::Delete(_)) => return,
                _ => {}
            }
        }
    })
    .await
    .expect("the pod is removed");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the worker did not exit on SIGTERM: the pod went after {:?}",
        started.elapsed()
    );
    // The kubelet reports the terminated container before it removes the pod.
    assert!(
        !exit_codes.is_empty() && exit_codes.iter().all(|c| *c == 0),
        "the worker exits 0 after draining: {exit_codes:?}"
    );
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the worker's process {pid} is gone");
}

/// How the operator uses the API, against the real API server: status is written through
/// the status subresource by server-side apply as field manager `workpool-operator`,
/// owning status and nothing of the user's spec (the user re-applies the spec without
/// force and without a conflict; status in the user's apply is ignored); the finalizer is
/// added beside the user's own and, on deletion, only the operator's is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_is_applied_by_workpool_operator_and_the_finalizer_leaves_others_alone() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-api", &[]);
    let mut pool = env.exec_pool("owned", 1, 0.0, json!({}));
    pool["metadata"]["finalizers"] = json!(["example.com/keep"]);
    env.apply_pool(&pool).await;
    let v = env.wait_ready("owned", 1).await;
    let finalizers = v["metadata"]["finalizers"].clone();
    assert_eq!(
        finalizers,
        json!(["example.com/keep", "workpool.dev/cleanup"]),
        "the operator's finalizer is added beside the user's"
    );
    let managed = v["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let entry = |manager: &str, subresource: Option<&str>| {
        managed
            .iter()
            .find(|m| {
                m["manager"] == manager
                    && m["subresource"].as_str() == subresource
                    && m["operation"] == "Apply"
            })
            .cloned()
    };
    let status = entry("workpool-operator", Some("status"))
        .unwrap_or_else(|| panic!("no status apply by workpool-operator: {managed:#?}"));
    let owned = &status["fieldsV1"];
    assert!(owned["f:status"]["f:conditions"].is_object(), "{owned}");
    assert!(owned["f:status"]["f:replicas"].is_object(), "{owned}");
    assert!(owned.get("f:spec").is_none(), "{owned}");
    let user = entry("workpool-tests", None).expect("the user's apply");
    assert!(
        user["fieldsV1"]["f:spec"]["f:replicas"].is_object(),
        "{user}"
    );
    // No other writer of the main resource under the operator's name owns spec fields.
    for m in managed
        .iter()
        .filter(|m| m["manager"] == "workpool-operator")
    {
        assert!(m["fieldsV1"].get("f:spec").is_none(), "{m}");
    }

    // The user re-applies (no force) with a changed spec and a made-up status: no
    // conflict with the operator's fields, the spec changes, the status is not theirs.
    let mut again = pool.clone();
    again["spec"]["replicas"] = json!(2);
    again["status"] = json!({"replicas": 7, "readyReplicas": 7});
    env.pools()
        .patch(
            "owned",
            &PatchParams::apply("workpool-tests"),
            &Patch::Apply(&again),
        )
        .await
        .expect("the user's apply does not conflict with the operator's");
    let v = env.wait_ready("owned", 2).await;
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(v["status"]["replicas"], 2, "{}", v["status"]);

    // Deletion: the operator cleans up and removes its own finalizer only.
    env.pools()
        .delete("owned", &DeleteParams::default())
        .await
        .expect("delete");
    let v = env
        .wait_pool("owned", "only the user's finalizer left", T, |v| {
            v["metadata"]["finalizers"] == json!(["example.com/keep"])
        })
        .await;
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    eventually("the pool's pods are gone", T, || async {
        env.pool_pods("owned", true).await.is_empty().then_some(())
    })
    .await;
    env.pools()
        .patch(
            "owned",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("the user's finalizer removed");
    eventually("the pool is gone", T, || async {
        env.pool("owned").await.is_none().then_some(())
    })
    .await;
}

/// A pool as a user deploys one: the built-in `sleep` handler, the Redis URL in a Secret
/// (`redis`, key `url`), two tasks at a time per worker, the `/readyz` probe.
fn sleep_pool(env: &Env, pool: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
        "metadata": {"name": pool, "namespace": env.ns},
        "spec": {
            "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "replicas": replicas,
            "delivery": {"visibilityTimeoutSeconds": 10, "maxDeliveries": 5},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "worker",
                    "image": worker_image(),
                    "args": ["run", "--builtin", "sleep"],
                    "env": [
                        {"name": "WORKPOOL_CONCURRENCY", "value": "2"},
                        {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"}
                    ],
                    "ports": [{"name": "metrics", "containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"},
                                       "periodSeconds": 1}
                }]
            }}
        }
    })
}

/// The Secret `redis` with the test's Redis URL, as a user would create it.
async fn redis_secret(env: &Env) {
    env.cluster
        .apply_object(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "redis", "namespace": env.ns},
            "stringData": {"url": env.redis_url()}
        }))
        .await
        .expect("secret");
}

/// `n` sleep tasks of `ms` each on the pool's stream (stream = pool name).
fn submit_sleeps(env: &Env, pool: &str, n: usize, ms: u64) {
    let tasks: Vec<String> = (0..n)
        .map(|i| json!({"ms": ms, "n": i}).to_string())
        .collect();
    env.submit(pool, &tasks);
}

/// The pool's pods that are not terminating and are Ready.
async fn ready_pods(env: &Env, pool: &str) -> std::collections::BTreeSet<String> {
    env.pool_pods(pool, false)
        .await
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Every task of `pool` finished: nothing left in the stream (the worker deletes what it
/// acknowledges), nothing pending, nothing dead-lettered.
async fn wait_drained(env: &Env, pool: &str) {
    eventually(&format!("{pool} drained"), T, || async {
        (env.redis_cli(&["XLEN", pool]).trim() == "0").then_some(())
    })
    .await;
    let pending = env.redis_cli(&["XPENDING", pool, pool]);
    assert!(
        pending.trim().starts_with('0'),
        "{pool}: nothing pending, got {pending}"
    );
    assert_eq!(
        env.redis_cli(&["XLEN", &format!("{pool}:dead")]).trim(),
        "0",
        "{pool}: no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sleep_pools_drain_their_queues_and_a_deleted_pod_is_replaced() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-real-drain", &[]);
    redis_secret(&env).await;
    env.apply_pool(&sleep_pool(&env, "alpha", 3)).await;
    env.apply_pool(&sleep_pool(&env, "beta", 2)).await;
    eventually("3 ready alpha pods and 2 ready beta pods", T, || async {
        (ready_pods(&env, "alpha").await.len() == 3 && ready_pods(&env, "beta").await.len() == 2)
            .then_some(())
    })
    .await;
    // The pods are what the operator built: restricted securityContext, the URL through
    // the Secret (never in the spec), the consumer name from the downward API.
    let pod = &env.pool_pods("alpha", false).await[0];
    let spec = serde_json::to_value(pod.spec.as_ref().expect("spec")).expect("json");
    let url_var = spec["containers"][0]["env"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "WORKPOOL_REDIS_URL"))
        .cloned()
        .expect("WORKPOOL_REDIS_URL is injected");
    assert_eq!(url_var["valueFrom"]["secretKeyRef"]["name"], "redis");
    assert!(
        !spec.to_string().contains("redis://"),
        "the Redis URL is not copied into the pod spec"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    // Enough work that a pod is deleted while tasks are in flight: 3 pods x 2 at a time.
    submit_sleeps(&env, "alpha", 60, 600);
    submit_sleeps(&env, "beta", 30, 200);
    eventually("alpha workers hold tasks", T, || async {
        env.redis_cli(&["XPENDING", "alpha", "alpha"])
            .lines()
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    })
    .await;
    let victim = ready_pods(&env, "alpha")
        .await
        .into_iter()
        .next()
        .expect("a pod");
    env.pods()
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("pod deleted");
    eventually("a replacement for the deleted alpha pod", T, || async {
        let now = ready_pods(&env, "alpha").await;
        (now.len() == 3 && !now.contains(&victim)).then_some(())
    })
    .await;
    wait_drained(&env, "alpha").await;
    wait_drained(&env, "beta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_scale_and_deleting_a_sleep_pool() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-real-scale", &[]);
    redis_secret(&env).await;
    env.apply_pool(&sleep_pool(&env, "gamma", 1)).await;
    env.apply_pool(&sleep_pool(&env, "delta", 2)).await;
    eventually("1 ready gamma pod, 2 ready delta pods", T, || async {
        (ready_pods(&env, "gamma").await.len() == 1 && ready_pods(&env, "delta").await.len() == 2)
            .then_some(())
    })
    .await;
    // `kubectl scale` goes through the scale subresource.
    let scale = |replicas: u32| {
        let out = std::process::Command::new(workpool_tests::cluster::kubectl_path())
            .arg(format!(
                "--kubeconfig={}",
                env.cluster.kubeconfig_path().display()
            ))
            .args(["-n", &env.ns, "scale", "workpool/gamma"])
            .arg(format!("--replicas={replicas}"))
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl scale: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    scale(3);
    eventually("3 ready gamma pods", T, || async {
        (ready_pods(&env, "gamma").await.len() == 3).then_some(())
    })
    .await;
    submit_sleeps(&env, "gamma", 20, 100);
    wait_drained(&env, "gamma").await;
    scale(1);
    eventually("gamma down to 1 pod", T, || async {
        (env.pool_pods("gamma", true).await.len() == 1).then_some(())
    })
    .await;

    // Delta works, then is deleted: its pods and its consumers go, its stream stays.
    submit_sleeps(&env, "delta", 10, 100);
    wait_drained(&env, "delta").await;
    assert!(
        !env.consumers("delta", "delta").is_empty(),
        "delta's workers are consumers of its group"
    );
    env.pools()
        .delete("delta", &DeleteParams::default())
        .await
        .expect("pool deleted");
    eventually("delta's pods and the pool gone", T, || async {
        (env.pool_pods("delta", true).await.is_empty() && env.pool("delta").await.is_none())
            .then_some(())
    })
    .await;
    assert!(
        env.consumers("delta", "delta").is_empty(),
        "the finalizer removed the pool's consumers"
    );
    assert_eq!(
        env.redis_cli(&["EXISTS", "delta"]).trim(),
        "1",
        "the stream, the user's data, stays"
    );
    // The other pool is untouched.
    assert_eq!(env.pool_pods("gamma", false).await.len(), 1);
}
