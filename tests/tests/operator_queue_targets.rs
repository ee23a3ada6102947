//! Pools past one Redis, end to end on the real control plane and the real node: worker
//! pods (real containers) and the real operator (on the host) reach, through the pod
//! network, a Sentinel set (1 primary, 2 replicas, 3 sentinels) whose primary is killed
//! during the drain, a Redis Cluster (3 primaries) holding a pool of 6 partitions, and a
//! Redis with a private CA that requires client certificates, the CA and certificate
//! given to the pool by Secret reference (mounted into the pods, read by the operator's
//! probe). All the Redis processes are real `redis-server`/`redis-sentinel` on the host.
//!
//! Where a real node cannot run (not root, no containerd, Kubernetes not built), each
//! test prints one line and returns, except under `CI=true`, where that is a failure.

mod operator_support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator_support::{Operator, cond, pools_api};
use serde_json::{Value, json};
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_worker::queue::{NewTask, Pool};
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::{
    ClusterOptions as RedisClusterOptions, RedisCluster, RedisServer, SentinelOptions, SentinelSet,
    ServerOptions, TestCa,
};

const WORKER_IMAGE: &str = "ghcr.io/workpool-dev/workpool-worker:0.1.0";
const WAIT: Duration = Duration::from_secs(240);

/// A test's namespace (its pods on the real node) and operator.
struct Env {
    cluster: TestCluster,
    operator: Operator,
}

impl Env {
    /// A namespace of the test's own on the real control plane, whose pods run on the
    /// binary's shared real node (fails saying what is missing where it cannot run), and
    /// the host address those pods reach the test's Redis servers at.
    async fn start(name: &str) -> (Env, IpAddr) {
        operator_support::binaries();
        let cluster = TestCluster::start_real(ClusterOptions::default())
            .await
            .expect("the real control plane");
        let node = cluster
            .shared_node()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let operator = Operator::start(&cluster, name, &[]);
        (Env { cluster, operator }, IpAddr::V4(node.host_ip()))
    }

    async fn secret(&self, name: &str, data: Value) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": data
        }))
        .expect("secret");
        Api::<Secret>::namespaced(self.cluster.client(), self.cluster.namespace())
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret created");
    }

    /// A pool of `replicas` real worker containers (built-in sleep handler), its queue as
    /// `redis` says (merged into spec.queue.redis; the URL in Secret `url_secret`).
    async fn apply_pool(&self, pool: &str, replicas: i32, url_secret: &str, redis: Value) {
        let mut queue = json!({"urlSecretRef": {"name": url_secret, "key": "url"}});
        operator_support::merge(&mut queue, &redis);
        let manifest = json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": pool, "namespace": self.cluster.namespace()},
            "spec": {
                "queue": {"redis": queue},
                "replicas": replicas,
                "delivery": {"visibilityTimeoutSeconds": 10, "maxDeliveries": 5},
                "template": {"spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "worker",
                        "image": WORKER_IMAGE,
                        "args": ["run", "--builtin", "sleep"],
                        "env": [{"name": "WORKPOOL_CONCURRENCY", "value": "4"}]
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

    async fn pool(&self, pool: &str) -> Value {
        pools_api(&self.cluster.client(), self.cluster.namespace())
            .get(pool)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .unwrap_or_default()
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            if Instant::now() > deadline {
                let log = self.operator.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for {what}\n--- operator log (last lines, newest first) ---\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until the pool's queue, read through `target`, holds nothing: no entry, none
    /// pending, no dead letter.
    async fn wait_drained(&self, target: &Target, pool: &Pool) {
        self.wait_for("the queue to drain", || async {
            match target.connect(Some(Duration::from_secs(5))).await {
                Ok(c) => pool
                    .stats(&c)
                    .await
                    .is_ok_and(|st| st.stream_exists && st.stream_length == 0 && st.pending == 0),
                Err(_) => false,
            }
        })
        .await;
        let c = target
            .connect(Some(Duration::from_secs(5)))
            .await
            .expect("connect");
        assert_eq!(pool.stats(&c).await.expect("stats").dead_letters, 0);
    }
}

/// Tasks of `{"ms": ms}`, spread round robin over the pool's partitions, each pipeline
/// confirmed by `min_replicas` replicas.
async fn submit(target: &Target, pool: &Pool, n: usize, ms: u64, min_replicas: u32) {
    let c = target
        .connect(Some(Duration::from_secs(10)))
        .await
        .expect("connect");
    let payload = json!({"ms": ms}).to_string();
    for p in 0..pool.partitions() {
        let tasks: Vec<NewTask<'_>> = (p..n)
            .step_by(pool.partitions())
            .map(|_| NewTask::new(payload.as_bytes()))
            .collect();
        let (ids, acked) = pool
            .partition(p)
            .enqueue_wait(&mut c.clone(), &tasks, min_replicas, Duration::from_secs(5))
            .await
            .expect("enqueue");
        assert_eq!(ids.len(), tasks.len());
        assert!(
            acked >= u64::from(min_replicas),
            "confirmed by {acked} replicas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_sentinel_drains_through_a_failover_of_its_primary() {
    let (env, host) = Env::start("op-targets-sentinel").await;
    let mut set = SentinelSet::start(SentinelOptions {
        announce: Some(host),
        ..SentinelOptions::default()
    })
    .expect("sentinel set");
    let url = set.url();
    assert!(url.contains(&host.to_string()), "{url}");
    env.secret("sentinel", json!({"url": url})).await;
    env.apply_pool("sent", 2, "sentinel", json!({})).await;
    let target = Target::new(&url, &Tls::none()).expect("target");
    let pool = Pool::new("sent", "sent");
    submit(&target, &pool, 60, 400, 1).await;
    env.wait_for("workers holding tasks", || async {
        match target.connect(Some(Duration::from_secs(5))).await {
            Ok(c) => pool.stats(&c).await.is_ok_and(|st| st.pending > 0),
            Err(_) => false,
        }
    })
    .await;
    let old = set.kill_primary().expect("kill the primary");
    let new = set
        .wait_for_failover(old, Duration::from_secs(60))
        .expect("failover");
    eprintln!("primary {old} killed, {new} promoted");
    env.wait_drained(&target, &pool).await;
    env.wait_for("QueueReachable=True after the failover", || async {
        let wp = env.pool("sent").await;
        cond(&wp, "QueueReachable").is_some_and(|c| c["status"] == "True")
            && wp["status"]["queue"]["backlog"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_six_partitions_on_a_redis_cluster_drains() {
    let (env, host) = Env::start("op-targets-cluster").await;
    let cluster = RedisCluster::start(RedisClusterOptions {
        announce: Some(host),
        ..RedisClusterOptions::default()
    })
    .expect("redis cluster");
    let url = cluster.url();
    env.secret("cluster", json!({"url": url})).await;
    let target = Target::new(&url, &Tls::none()).expect("target");
    let pool = Pool::new("parts", "parts")
        .with_partitions(6)
        .with_cluster(true);
    submit(&target, &pool, 240, 50, 0).await;
    env.apply_pool("parts", 3, "cluster", json!({"partitions": 6}))
        .await;
    env.wait_for("the status to show the six partitions", || async {
        let wp = env.pool("parts").await;
        wp["status"]["queue"]["partitions"]
            .as_array()
            .is_some_and(|p| p.len() == 6 && p[5]["stream"] == "{parts:5}")
    })
    .await;
    env.wait_drained(&target, &pool).await;
    env.wait_for("the status to show an empty queue", || async {
        let wp = env.pool("parts").await;
        wp["status"]["queue"]["backlog"] == 0
            && cond(&wp, "QueueReachable").is_some_and(|c| c["status"] == "True")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_private_ca_with_client_certificates_from_secrets() {
    let (env, host) = Env::start("op-targets-mtls").await;
    let ca = Arc::new(TestCa::with_ips(&[host]).expect("ca"));
    let redis = RedisServer::start_opts(ServerOptions {
        tls: Some(ca.clone()),
        tls_auth_clients: true,
        also_on: Some(host),
        ..ServerOptions::default()
    })
    .expect("redis with mTLS");
    let url = redis.tls_url_on_also().expect("tls url");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("pem");
    env.secret("tls-url", json!({"url": url})).await;
    env.secret("redis-ca", json!({"ca.crt": read(ca.ca_file())}))
        .await;
    env.secret(
        "redis-client",
        json!({"tls.crt": read(ca.client_cert_file()), "tls.key": read(ca.client_key_file())}),
    )
    .await;
    let other = TestCa::new().expect("another CA");
    env.secret("other-ca", json!({"ca.crt": read(other.ca_file())}))
        .await;
    let tls = json!({"tls": {"caSecretRef": {"name": "redis-ca"},
                             "clientCertSecretRef": {"name": "redis-client"}}});
    let target = Target::new(&url, &ca.client_tls().expect("tls")).expect("target");
    let pool = Pool::new("secure", "secure");
    submit(&target, &pool, 30, 50, 0).await;
    env.apply_pool("secure", 2, "tls-url", tls).await;
    env.wait_drained(&target, &pool).await;
    env.wait_for("QueueReachable=True over mTLS", || async {
        let wp = env.pool("secure").await;
        cond(&wp, "QueueReachable").is_some_and(|c| c["status"] == "True")
            && wp["status"]["queue"]["backlog"] == 0
    })
    .await;
    // The same Redis through a CA that did not sign its certificate.
    env.apply_pool(
        "wrongca",
        1,
        "tls-url",
        json!({"tls": {"caSecretRef": {"name": "other-ca"},
                       "clientCertSecretRef": {"name": "redis-client"}}}),
    )
    .await;
    env.wait_for("QueueReachable=False with reason TLSFailed", || async {
        let wp = env.pool("wrongca").await;
        cond(&wp, "QueueReachable").is_some_and(|c| {
            c["status"] == "False"
                && c["reason"] == "TLSFailed"
                && !c["message"].as_str().unwrap_or("").contains(&url)
        })
    })
    .await;
}
