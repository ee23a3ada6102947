//! Shared by `operator_audit` (the 12 findings of issue #14's outside audit) and
//! `operator_drain` (its drain scenarios): pools of real worker containers on the real
//! node (containerd + runc, the worker image built from our binary), a real
//! redis-server the pods reach at the node's host address, the real `workpool-operator`
//! binary, and recorders that watch a WorkPool's versions and a pool's pods through the
//! API so that tests assert counts and invariants, never one interleaving.
//!
//! Process control of a worker goes through the node (`Node::signal_container`: the
//! container's main process, its PID from containerd), as a process dies on a real node.
//!
//! Owned by the audit tests (helper A of #14); `operator_support` (the operator process,
//! metrics parsing) is shared with the other suites and only used from here.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_tests::controlplane::ControlPlane;
use workpool_tests::node::{self, Node, NodeOptions};
use workpool_worker::testing::RedisServer;

use crate::operator_support::{self, Operator, Signal, pools_api};

/// The label this binary's real nodes carry; a test namespace's pods select its node by
/// it (PodNodeSelector), so tests of one binary never share a node they drain.
pub const NODE_LABEL: &str = "workpool.dev/audit-node";
/// The operator's template-hash label on pods.
pub const TEMPLATE_HASH_LABEL: &str = "workpool.dev/template-hash";
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Generous wait for anything the operator or the node does.
pub const WAIT: Duration = Duration::from_secs(180);

/// The worker image reference the real node imports (the chart's appVersion; never
/// `:latest`, which the kubelet would try to pull).
pub fn worker_image() -> String {
    operator_support::worker_image()
}

type NodeSlot = OnceLock<Result<Node, String>>;

/// A real node of this test binary on the shared control plane, started on first use
/// and labelled `NODE_LABEL=<which>`. Where a real node cannot run, the test fails saying
/// what is missing (there is no other cluster to fall back to).
pub fn real_node(which: &'static str) -> &'static Node {
    static MAIN: NodeSlot = OnceLock::new();
    static SECOND: NodeSlot = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let slot = match which {
        "main" => &MAIN,
        _ => &SECOND,
    };
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let started = slot.get_or_init(|| {
        if let Some(reason) =
            node::unavailable_reason().or_else(workpool_tests::controlplane::unavailable_reason)
        {
            return Err(reason);
        }
        // The worker image is built from target/debug/workpool-worker: build it first.
        operator_support::binaries();
        let cp = ControlPlane::shared().map_err(|e| format!("control plane: {e:#}"))?;
        Node::start(&cp, NodeOptions::new().label(NODE_LABEL, which))
            .map_err(|e| format!("node: {e:#}"))
    });
    match started {
        Ok(node) => node,
        Err(reason) => panic!("the real node cannot run here: {reason}"),
    }
}

/// A test's namespace on the real control plane (its pods pinned to one real node), its
/// redis-server (reachable from pods at the node's host address, the URL in Secret
/// `redis`), and its operators.
pub struct RealEnv {
    /// First, so they stop (and, on a failure, print their logs) before the cluster's
    /// directory, which holds their logs, goes.
    pub operators: Vec<Operator>,
    pub cluster: TestCluster,
    pub redis: RedisServer,
    pub node: &'static Node,
    /// Pods given a test finalizer; it is removed on drop so the namespace can go.
    held_pods: Mutex<Vec<String>>,
}

impl RealEnv {
    /// The environment with one operator started with `flags` (test timings otherwise).
    pub async fn start(name: &str, flags: &[&str]) -> RealEnv {
        Self::start_on("main").await.with_operator(name, flags)
    }

    /// The environment without an operator, its pods on node `which`.
    pub async fn start_on(which: &'static str) -> RealEnv {
        let node = tokio::task::spawn_blocking(move || real_node(which))
            .await
            .expect("the real node");
        let redis = RedisServer::start_also_on(IpAddr::V4(node.host_ip())).expect("redis-server");
        // (A namespace of its own, as every TestCluster has.)
        let cluster = TestCluster::start_real(ClusterOptions::default())
            .await
            .expect("cluster");
        let namespaces: Api<Namespace> = Api::all(cluster.client());
        namespaces
            .patch(
                cluster.namespace(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "scheduler.alpha.kubernetes.io/node-selector": format!("{NODE_LABEL}={which}")
                }}})),
            )
            .await
            .expect("namespace pinned to its real node");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "redis"},
            "stringData": {"url": redis.url_on_also()}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(cluster.client(), cluster.namespace())
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret created");
        RealEnv {
            cluster,
            redis,
            node,
            operators: Vec::new(),
            held_pods: Mutex::new(Vec::new()),
        }
    }

    /// Adds an operator; it must still run a moment later (a flag it does not know is a
    /// failure that says so, not a timeout further down).
    pub fn with_operator(mut self, name: &str, flags: &[&str]) -> RealEnv {
        let op = start_operator(&self.cluster, name, flags);
        self.operators.push(op);
        self
    }

    pub fn operator(&self) -> &Operator {
        self.operators.first().expect("an operator")
    }

    pub fn ns(&self) -> &str {
        self.cluster.namespace()
    }

    pub fn client(&self) -> kube::Client {
        self.cluster.client()
    }

    pub fn pools(&self) -> Api<DynamicObject> {
        pools_api(&self.client(), self.ns())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client(), self.ns())
    }

    /// A WorkPool manifest: `replicas` real workers running the built-in sleep handler
    /// (payload `{"ms": N}`), `concurrency` tasks at a time each, visibility timeout 30 s,
    /// `maxDeliveries: 1` (a task interrupted and run again is dead-lettered: the
    /// interruption shows), 10 s termination grace, 3 s worker shutdown grace; `extra` is
    /// merged into the spec.
    pub fn pool(&self, name: &str, replicas: i32, concurrency: u32, extra: Value) -> Value {
        let mut spec = json!({
            "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "replicas": replicas,
            "delivery": {"visibilityTimeoutSeconds": 30, "maxDeliveries": 1},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 10,
                "containers": [worker_container(concurrency, &[])]
            }}
        });
        operator_support::merge(&mut spec, &extra);
        json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": name, "namespace": self.ns()},
            "spec": spec
        })
    }

    /// Server-side applies a pool manifest.
    pub async fn apply(&self, manifest: &Value) {
        let name = manifest["metadata"]["name"].as_str().expect("name");
        self.pools()
            .patch(
                name,
                &PatchParams::apply("workpool-tests").force(),
                &Patch::Apply(manifest),
            )
            .await
            .unwrap_or_else(|e| panic!("applying WorkPool {name}: {e}"));
    }

    /// A JSON merge patch of a pool.
    pub async fn patch_pool(&self, name: &str, patch: Value) {
        self.pools()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patching WorkPool {name} with {patch}: {e}"));
    }

    /// `spec.replicas` through the merge patch `kubectl scale` amounts to.
    pub async fn scale(&self, name: &str, replicas: i32) {
        self.patch_pool(name, json!({"spec": {"replicas": replicas}}))
            .await;
    }

    /// The pool as JSON (None when gone).
    pub async fn pool_json(&self, name: &str) -> Option<Value> {
        self.pools()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|p| serde_json::to_value(p).ok())
    }

    /// Every pod of the pool (terminating ones too).
    pub async fn all_pods(&self, pool: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("workpool.dev/pool={pool}"));
        self.pods()
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// The pool's pods without a deletion timestamp.
    pub async fn live_pods(&self, pool: &str) -> Vec<Pod> {
        let mut pods = self.all_pods(pool).await;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        pods
    }

    /// The pool's live pods that are Ready.
    pub async fn ready_pods(&self, pool: &str) -> Vec<Pod> {
        let mut pods = self.live_pods(pool).await;
        pods.retain(operator_support::pod_ready);
        pods
    }

    /// Waits until `check` returns `Some`, polling; panics with `what`, the pods, the
    /// pools' status and the operators' logs.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// [`RealEnv::wait_for`] whose check says what it saw when it is not there yet
    /// (`Err(observation)`); the last observation is in the failure message.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check().await {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {last}\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Pods, pool statuses and the operators' last log lines, for a failure message.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::from("--- pods ---\n");
        let pods = self.pods().list(&Default::default()).await;
        for pod in pods.map(|l| l.items).unwrap_or_default() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = serde_json::to_value(&pod.status).unwrap_or_default();
            let waiting: Vec<String> = status["containerStatuses"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| c["state"].to_string().chars().take(160).collect())
                        .collect()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "{name}: phase {} deleting {} hash {:?} annotations {:?} state {waiting:?}\n",
                status["phase"],
                pod.metadata.deletion_timestamp.is_some(),
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(TEMPLATE_HASH_LABEL)),
                pod.metadata.annotations.clone().unwrap_or_default(),
            ));
        }
        out.push_str("--- pools ---\n");
        let pools = self.pools().list(&Default::default()).await;
        for p in pools.map(|l| l.items).unwrap_or_default() {
            let v = serde_json::to_value(&p).unwrap_or_default();
            out.push_str(&format!("{}: {}\n", v["metadata"]["name"], v["status"]));
        }
        for op in &self.operators {
            out.push_str(&format!(
                "--- operator log {} (last lines) ---\n{}\n",
                op.log.display(),
                tail(&op.log_text(), 40)
            ));
        }
        out
    }

    /// `redis-cli` against the test's server (raw output, one value a line).
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// An integer reply.
    pub fn redis_count(&self, args: &[&str]) -> u64 {
        self.redis_cli(args).parse().unwrap_or(u64::MAX)
    }

    /// Adds sleep tasks of `ms` each, tagged `tag-<i>`; their entry ids.
    pub fn submit(&self, stream: &str, tag: &str, n: usize, ms: u64) -> Vec<String> {
        (0..n)
            .map(|i| {
                let payload = json!({"ms": ms, "task": format!("{tag}-{i}")}).to_string();
                let id = self.redis_cli(&["XADD", stream, "*", "payload", &payload]);
                assert!(id.contains('-'), "XADD to {stream} answered {id:?}");
                id
            })
            .collect()
    }

    /// Fills every slot of every worker of the pool: `durations_ms.len()` tasks (= pods x
    /// concurrency), then waits until all are held. Each worker can hold at most its
    /// concurrency, so once all are held every worker holds exactly that many, whichever
    /// order Redis served the readers in. Returns pod -> tasks held.
    pub async fn fill_every_slot(
        &self,
        pool: &str,
        pods: usize,
        durations_ms: &[u64],
    ) -> BTreeMap<String, usize> {
        for (i, ms) in durations_ms.iter().enumerate() {
            self.submit(pool, &format!("long{i}"), 1, *ms);
        }
        let per_pod = self
            .wait_until(
                &format!("all {} tasks of {pool} held", durations_ms.len()),
                WAIT,
                || async {
                    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
                    for pod in self.holders(pool, pool).values() {
                        *per_pod.entry(pod.clone()).or_default() += 1;
                    }
                    if per_pod.values().sum::<usize>() == durations_ms.len() {
                        Ok(per_pod)
                    } else {
                        Err(format!("held: {per_pod:?}"))
                    }
                },
            )
            .await;
        assert_eq!(
            per_pod.len(),
            pods,
            "{pool}: every worker holds tasks: {per_pod:?}"
        );
        per_pod
    }

    /// Submits tasks of `ms` one at a time until every one of `pods` holds at least one
    /// (a reader served twice first just holds two). Returns the number of tasks submitted.
    pub async fn busy_every_pod(&self, pool: &str, pods: &BTreeSet<String>, ms: u64) -> usize {
        let mut submitted = 0;
        loop {
            let busy: BTreeSet<String> = self.holders(pool, pool).values().cloned().collect();
            if pods.is_subset(&busy) {
                return submitted;
            }
            assert!(
                submitted < 3 * pods.len(),
                "{pool}: {submitted} tasks and still idle pods"
            );
            self.submit(pool, &format!("busy{submitted}"), 1, ms);
            submitted += 1;
            self.wait_for(
                &format!("{submitted} tasks of {pool} held"),
                WAIT,
                || async { (self.holders(pool, pool).len() == submitted).then_some(()) },
            )
            .await;
        }
    }

    /// Entry id -> consumer for every task pending in the group (`XPENDING` detail).
    pub fn holders(&self, stream: &str, group: &str) -> BTreeMap<String, String> {
        let out = self.redis_cli(&["XPENDING", stream, group, "-", "+", "10000"]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .chunks(4)
            .filter(|c| c.len() == 4 && c[0].contains('-'))
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// Consumer -> tasks pending (`XINFO CONSUMERS`).
    pub fn consumers(&self, stream: &str, group: &str) -> BTreeMap<String, u64> {
        let out = self.redis_cli(&["XINFO", "CONSUMERS", stream, group]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut res = BTreeMap::new();
        let mut name = None;
        for pair in lines.windows(2) {
            match pair[0] {
                "name" => name = Some(pair[1].to_string()),
                "pending" => {
                    if let Some(n) = name.take() {
                        res.insert(n, pair[1].parse().unwrap_or(0));
                    }
                }
                _ => {}
            }
        }
        res
    }

    /// The drain hash of a pool whose stream is `stream` (standalone, one partition):
    /// consumer -> `requested` | `stopped`.
    pub fn draining(&self, stream: &str) -> BTreeMap<String, String> {
        let key = format!("{stream}:draining");
        let out = self.redis_cli(&["HGETALL", &key]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// True when Redis does not answer a PING within a second (frozen or gone).
    pub fn redis_cli_times_out(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.redis.port())) else {
            return true;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        if conn.write_all(b"PING\r\n").is_err() {
            return true;
        }
        let mut buf = [0u8; 16];
        !matches!(conn.read(&mut buf), Ok(n) if n > 0)
    }

    /// Dead letters of a pool (default dead-letter stream).
    pub fn dead_letters(&self, stream: &str) -> u64 {
        self.redis_count(&["XLEN", &format!("{stream}:dead")])
    }

    /// Every task of the stream finished: the worker deletes what it acknowledges, so the
    /// stream is empty and nothing is pending.
    pub async fn wait_all_done(&self, stream: &str, timeout: Duration) {
        self.wait_for(&format!("every task of {stream} done"), timeout, || async {
            (self.redis_count(&["XLEN", stream]) == 0).then_some(())
        })
        .await;
    }

    /// Events of `reason` about the pool: (note, count with its series).
    pub async fn events(&self, pool: &str, reason: &str) -> Vec<(String, i32)> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client(), self.ns())
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool)
            })
            .map(|e| {
                let count = e
                    .series
                    .as_ref()
                    .map(|s| s.count)
                    .or(e.deprecated_count)
                    .unwrap_or(1)
                    .max(1);
                (e.note.unwrap_or_default(), count)
            })
            .collect()
    }

    /// Sends `signal` to the main process of a pod's container from the host, through the
    /// node (its PID from containerd's task list): `SIGKILL` ends it as a crash or the OOM
    /// killer would on a real node.
    pub async fn signal_container(&self, pod: &str, container: &str, signal: Signal) {
        let p = self.pods().get(pod).await.expect("pod");
        let id = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == container)
            .and_then(|c| c.container_id)
            .unwrap_or_else(|| panic!("pod {pod} has no container {container}"));
        self.node
            .signal_container(&id, signal)
            .unwrap_or_else(|e| panic!("{signal} to {container} of {pod}: {e:#}"));
    }

    /// Adds a finalizer of the test's own to a pod (it stays Terminating once deleted);
    /// removed again on drop.
    pub async fn hold_pod(&self, pod: &str) {
        self.pods()
            .patch(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": ["workpool.dev/test-hold"]}})),
            )
            .await
            .unwrap_or_else(|e| panic!("finalizer on pod {pod}: {e}"));
        self.held_pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pod.to_string());
    }

    /// Removes the test finalizer from every held pod.
    pub async fn release_pods(&self) {
        let held: Vec<String> =
            std::mem::take(&mut *self.held_pods.lock().unwrap_or_else(|p| p.into_inner()));
        for pod in held {
            let _ = self
                .pods()
                .patch(
                    &pod,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }

    /// Deletes a pod (default grace).
    pub async fn delete_pod(&self, pod: &str) {
        match self.pods().delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting pod {pod}: {e}"),
        }
    }

    /// The operator's /metrics body.
    pub async fn metrics(&self, op: &Operator) -> String {
        op.get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `kubectl` against the test cluster, in the test namespace.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(workpool_tests::cluster::kubectl_path())
            .arg(format!(
                "--kubeconfig={}",
                self.cluster.kubeconfig_path().display()
            ))
            .args(["-n", self.ns()])
            .args(args)
            .output()
            .expect("kubectl runs")
    }
}

impl Drop for RealEnv {
    fn drop(&mut self) {
        // Held pods would keep the namespace from going: release them synchronously.
        let held: Vec<String> =
            std::mem::take(&mut *self.held_pods.lock().unwrap_or_else(|p| p.into_inner()));
        for pod in held {
            let _ = self.kubectl(&[
                "patch",
                "pod",
                &pod,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

/// Lease timings of the operators of these tests unless a test sets its own: generous,
/// because a renewal that misses its deadline makes the operator exit (by design: its
/// Deployment restarts it), and on a loaded 2-core machine the API server can take
/// seconds to answer. Leader election itself is tested with short leases (finding 5).
const RELAXED_LEASE: [&str; 6] = [
    "--lease-duration",
    "20",
    "--lease-renew-deadline",
    "15",
    "--lease-retry-period",
    "2",
];

/// Starts an operator and checks that it is still running a moment later.
pub fn start_operator(cluster: &TestCluster, name: &str, flags: &[&str]) -> Operator {
    let mut all: Vec<&str> = flags.to_vec();
    if !flags.iter().any(|f| f.starts_with("--lease-")) {
        all.extend(RELAXED_LEASE);
    }
    let mut op = Operator::start(cluster, name, &all);
    std::thread::sleep(Duration::from_millis(700));
    if let Some(child) = op.child.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        panic!(
            "workpool-operator {flags:?} exited at start ({status}): {}",
            tail(&op.log_text(), 10)
        );
    }
    op
}

/// The worker container: built-in sleep handler, `concurrency` slots, a 3 s shutdown
/// grace (a task cut short shows), metrics and readiness on 9090, `extra_env` appended.
pub fn worker_container(concurrency: u32, extra_env: &[(&str, &str)]) -> Value {
    worker_container_with_grace(concurrency, 3, extra_env)
}

/// [`worker_container`] with the worker's `--shutdown-grace` in seconds.
pub fn worker_container_with_grace(
    concurrency: u32,
    shutdown_grace_s: u32,
    extra_env: &[(&str, &str)],
) -> Value {
    let mut env = vec![
        json!({"name": "WORKPOOL_CONCURRENCY", "value": concurrency.to_string()}),
        json!({"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"}),
        json!({"name": "WORKPOOL_SHUTDOWN_GRACE", "value": shutdown_grace_s.to_string()}),
    ];
    for (k, v) in extra_env {
        env.push(json!({"name": k, "value": v}));
    }
    json!({
        "name": "worker",
        "image": worker_image(),
        "args": ["run", "--builtin", "sleep"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 1}
    })
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

pub fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(name_of).collect()
}

pub fn template_hash(p: &Pod) -> Option<String> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL).cloned())
}

pub fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

/// The status and reason of condition `type_` of a pool JSON.
pub fn condition(v: &Value, type_: &str) -> (String, String, String) {
    let c = operator_support::cond(v, type_).unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
        c["message"].as_str().unwrap_or("").to_string(),
    )
}

/// An integer of a pool's status (`None` when absent).
pub fn status_int(v: &Value, field: &str) -> Option<i64> {
    v["status"][field].as_i64()
}

/// One version of a WorkPool as a watch delivered it.
#[derive(Debug, Clone)]
pub struct PoolVersion {
    pub at: Instant,
    pub resource_version: String,
    pub object: Value,
}

/// Records every version of one WorkPool the API sends on a watch (a status write, a
/// spec change, a finalizer patch...), from the moment it is started.
pub struct PoolRecorder {
    versions: Arc<Mutex<Vec<PoolVersion>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PoolRecorder {
    pub fn start(env: &RealEnv, pool: &str) -> PoolRecorder {
        let api = env.pools();
        let versions: Arc<Mutex<Vec<PoolVersion>>> = Arc::default();
        let sink = versions.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={pool}"));
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let obj = match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                    _ => continue,
                };
                let rv = obj.metadata.resource_version.clone().unwrap_or_default();
                let mut v = sink.lock().unwrap_or_else(|p| p.into_inner());
                if v.last().is_some_and(|l| l.resource_version == rv) {
                    continue;
                }
                v.push(PoolVersion {
                    at: Instant::now(),
                    resource_version: rv,
                    object: serde_json::to_value(&obj).unwrap_or_default(),
                });
            }
        });
        PoolRecorder { versions, task }
    }

    pub fn versions(&self) -> Vec<PoolVersion> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Versions first seen at or after `since`.
    pub fn since(&self, since: Instant) -> Vec<PoolVersion> {
        self.versions()
            .into_iter()
            .filter(|v| v.at >= since)
            .collect()
    }
}

impl Drop for PoolRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a watch of a pool's pods showed.
#[derive(Debug, Clone, Default)]
pub struct PodHistory {
    /// Every pod name seen, with the time first seen.
    pub seen: BTreeMap<String, Instant>,
    /// Pods seen with a deletion timestamp, with the time first seen so.
    pub deleting: BTreeMap<String, Instant>,
    /// Pods seen gone.
    pub gone: BTreeSet<String>,
    /// The most pods alive (no deletion timestamp, not finished) at once.
    pub max_live: usize,
    /// The latest object of every pod (gone ones included).
    pub last: BTreeMap<String, Pod>,
}

/// Records a pool's pods through a watch: names, deletions, the most alive at once.
pub struct PodRecorder {
    history: Arc<Mutex<PodHistory>>,
    task: tokio::task::JoinHandle<()>,
}

fn alive(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        )
}

impl PodRecorder {
    /// Pods with `selector` (e.g. `workpool.dev/pool=x`, or `workpool.dev/pool` for all).
    pub fn start(env: &RealEnv, selector: &str) -> PodRecorder {
        let api = env.pods();
        let history: Arc<Mutex<PodHistory>> = Arc::default();
        let sink = history.clone();
        let cfg = watcher::Config::default().labels(selector);
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let mut h = sink.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                        let name = name_of(&p);
                        h.seen.entry(name.clone()).or_insert_with(Instant::now);
                        if p.metadata.deletion_timestamp.is_some() {
                            h.deleting.entry(name.clone()).or_insert_with(Instant::now);
                        }
                        h.last.insert(name, p);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        let name = name_of(&p);
                        h.deleting.entry(name.clone()).or_insert_with(Instant::now);
                        h.gone.insert(name.clone());
                        h.last.insert(name, p);
                    }
                    _ => continue,
                }
                let gone = h.gone.clone();
                let live = h
                    .last
                    .iter()
                    .filter(|(n, p)| !gone.contains(*n) && alive(p))
                    .count();
                h.max_live = h.max_live.max(live);
            }
        });
        PodRecorder { history, task }
    }

    pub fn history(&self) -> PodHistory {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for PodRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every command Redis runs (`MONITOR`, which shows commands run by scripts too), read on
/// a connection of its own until dropped.
pub struct RedisMonitor {
    lines: Arc<Mutex<Vec<String>>>,
    conn: std::net::TcpStream,
}

impl RedisMonitor {
    pub fn start(port: u16) -> RedisMonitor {
        use std::io::{BufRead, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("monitor connects");
        conn.write_all(b"MONITOR\r\n").expect("MONITOR sent");
        let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("MONITOR answered");
        assert!(first.starts_with("+OK"), "MONITOR answered {first:?}");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.trim_end().to_string());
                line.clear();
            }
        });
        RedisMonitor { lines, conn }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for RedisMonitor {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}
