//! The operator against the real control plane AND the real node: worker pods are
//! containers (the worker image built from our binary, run by containerd and runc, with
//! the restricted securityContext the operator sets), reaching a real redis-server on
//! the host through the pod network, while the real `workpool-operator` binary runs on
//! the host. Unlike the pools of the other `operator_*` suites (`--exec` scripts with a
//! volume), these run the worker as a user would deploy it: the built-in `sleep` handler,
//! the URL in a Secret, `kubectl scale`.

mod operator_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use operator_support::{Operator, pools_api};
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_worker::testing::RedisServer;

const WORKER_IMAGE: &str = "ghcr.io/workpool-dev/workpool-worker:0.1.0";
const WAIT: Duration = Duration::from_secs(180);

/// A test's namespace on the real control plane, its redis-server (reachable from pods
/// at the node's host address), its operator, and a Secret `redis` holding the URL.
struct Env {
    cluster: TestCluster,
    redis: RedisServer,
    operator: Operator,
}

impl Env {
    async fn start(name: &str) -> Env {
        // The worker image is built from target/debug/workpool-worker: build it first.
        operator_support::binaries();
        let cluster = TestCluster::start_real(ClusterOptions {
            own_namespace: true,
            ..ClusterOptions::default()
        })
        .await
        .expect("cluster");
        let node = cluster
            .shared_node()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let redis = RedisServer::start_also_on(IpAddr::V4(node.host_ip())).expect("redis-server");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "redis"},
            "stringData": {"url": redis.url_on_also()}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(cluster.client(), cluster.namespace())
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret created");
        let operator = Operator::start(&cluster, name, &[]);
        Env {
            cluster,
            redis,
            operator,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client(), self.cluster.namespace())
    }

    /// A pool of `replicas` real worker containers running the built-in sleep handler.
    async fn apply_pool(&self, pool: &str, replicas: i32) {
        let manifest = json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": pool, "namespace": self.cluster.namespace()},
            "spec": {
                "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
                "replicas": replicas,
                "delivery": {"visibilityTimeoutSeconds": 10, "maxDeliveries": 5},
                "template": {"spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "worker",
                        "image": WORKER_IMAGE,
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
        });
        pools_api(&self.cluster.client(), self.cluster.namespace())
            .patch(
                pool,
                &PatchParams::apply("workpool-tests").force(),
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap_or_else(|e| panic!("applying WorkPool {pool}: {e}"));
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn count(&self, args: &[&str]) -> u64 {
        self.redis_cli(args).parse().unwrap_or(u64::MAX)
    }

    /// Adds `n` sleep tasks of `ms` each to the pool's stream (stream = pool name).
    fn submit(&self, pool: &str, n: usize, ms: u64) {
        for i in 0..n {
            let payload = json!({"ms": ms, "n": i}).to_string();
            self.redis_cli(&["XADD", pool, "*", "payload", &payload]);
        }
    }

    /// The pool's pods without a deletion timestamp, Running and Ready.
    async fn ready_pods(&self, pool: &str) -> Vec<Pod> {
        self.live_pods(pool)
            .await
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect()
    }

    async fn live_pods(&self, pool: &str) -> Vec<Pod> {
        let mut pods = self.all_pods(pool).await;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        pods
    }

    async fn all_pods(&self, pool: &str) -> Vec<Pod> {
        let lp = kube::api::ListParams::default().labels(&format!("workpool.dev/pool={pool}"));
        self.pods()
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until `check` holds, polling; panics with `what` and the operator's log.
    async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- pods ---\n{}\n--- operator log ---\n{}",
                    self.pod_summary().await,
                    tail(&self.operator.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// One line per pod: name, phase, container states, and the last lines of its log.
    async fn pod_summary(&self) -> String {
        let pods = self.pods().list(&Default::default()).await;
        let mut out = String::new();
        for pod in pods.map(|l| l.items).unwrap_or_default() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = serde_json::to_value(&pod.status).unwrap_or_default();
            out.push_str(&format!(
                "{name}: phase {} containers {} conditions {}\n",
                status["phase"], status["containerStatuses"], status["conditions"]
            ));
            let logs = self
                .pods()
                .logs(
                    &name,
                    &kube::api::LogParams {
                        tail_lines: Some(5),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| format!("(no log: {e})"));
            out.push_str(&format!("  log: {logs}\n"));
        }
        out
    }

    /// Every task of `pool` finished: nothing left in the stream (the worker deletes what
    /// it acknowledges), nothing pending, nothing dead-lettered.
    async fn wait_drained(&self, pool: &str) {
        let dead = format!("{pool}:dead");
        self.wait_for(&format!("{pool} to drain"), || async {
            self.count(&["XLEN", pool]) == 0
        })
        .await;
        let pending = self.redis_cli(&["XPENDING", pool, pool]);
        assert!(
            pending.starts_with('0'),
            "{pool}: nothing pending, got {pending}"
        );
        assert_eq!(self.count(&["XLEN", &dead]), 0, "{pool}: no dead letters");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_of_real_containers_drain_their_queues_and_a_deleted_pod_is_replaced() {
    let env = Env::start("op-real-drain").await;
    env.apply_pool("alpha", 3).await;
    env.apply_pool("beta", 2).await;
    env.wait_for("3 ready alpha pods and 2 ready beta pods", || async {
        env.ready_pods("alpha").await.len() == 3 && env.ready_pods("beta").await.len() == 2
    })
    .await;
    // The pods are what the operator built: restricted securityContext, the URL through
    // the Secret (never in the spec), the consumer name from the downward API.
    let pod = &env.ready_pods("alpha").await[0];
    let spec = serde_json::to_value(pod.spec.as_ref().expect("spec")).expect("json");
    let env_vars = &spec["containers"][0]["env"];
    let url_var = env_vars
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "WORKPOOL_REDIS_URL"))
        .expect("WORKPOOL_REDIS_URL is injected");
    assert_eq!(url_var["valueFrom"]["secretKeyRef"]["name"], "redis");
    assert!(
        !spec.to_string().contains("redis://"),
        "the Redis URL is not copied into the pod spec"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    // Enough work that a pod is deleted while tasks are in flight: 3 pods x 2 at a time.
    env.submit("alpha", 60, 600);
    env.submit("beta", 30, 200);
    env.wait_for("alpha workers to hold tasks", || async {
        env.redis_cli(&["XPENDING", "alpha", "alpha"])
            .lines()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
    .await;
    let before = names(&env.live_pods("alpha").await);
    let victim = before.iter().next().cloned().expect("a pod");
    env.pods()
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("pod deleted");
    env.wait_for("a replacement for the deleted alpha pod", || async {
        let now = names(&env.ready_pods("alpha").await);
        now.len() == 3 && !now.contains(&victim)
    })
    .await;
    env.wait_drained("alpha").await;
    env.wait_drained("beta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_and_deleting_a_pool_of_real_containers() {
    let env = Env::start("op-real-scale").await;
    env.apply_pool("gamma", 1).await;
    env.apply_pool("delta", 2).await;
    env.wait_for("1 ready gamma pod, 2 ready delta pods", || async {
        env.ready_pods("gamma").await.len() == 1 && env.ready_pods("delta").await.len() == 2
    })
    .await;
    // `kubectl scale` goes through the scale subresource.
    let ns = env.cluster.namespace().to_string();
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let scale = |replicas: u32| {
        let out = Command::new(workpool_tests::cluster::kubectl_path())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["-n", &ns, "scale", "workpool/gamma"])
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
    env.wait_for("3 ready gamma pods", || async {
        env.ready_pods("gamma").await.len() == 3
    })
    .await;
    env.submit("gamma", 20, 100);
    env.wait_drained("gamma").await;
    scale(1);
    env.wait_for("gamma down to 1 pod", || async {
        env.all_pods("gamma").await.len() == 1
    })
    .await;

    // Delta works, then is deleted: its pods and its consumers go, its stream stays.
    env.submit("delta", 10, 100);
    env.wait_drained("delta").await;
    assert!(
        !env.redis_cli(&["XINFO", "CONSUMERS", "delta", "delta"])
            .is_empty(),
        "delta's workers are consumers of its group"
    );
    let pools = pools_api(&env.cluster.client(), env.cluster.namespace());
    pools
        .delete("delta", &DeleteParams::default())
        .await
        .expect("pool deleted");
    env.wait_for("delta's pods and the pool gone", || async {
        env.all_pods("delta").await.is_empty()
            && pools.get_opt("delta").await.ok().flatten().is_none()
    })
    .await;
    assert_eq!(
        env.redis_cli(&["XINFO", "CONSUMERS", "delta", "delta"]),
        "",
        "the finalizer removed the pool's consumers"
    );
    assert_eq!(
        env.count(&["EXISTS", "delta"]),
        1,
        "the stream, the user's data, stays"
    );
    // The other pool is untouched.
    assert_eq!(env.live_pods("gamma").await.len(), 1);
}
