//! Shared by the `operator_*` suites: the real `workpool-operator` and `workpool-worker`
//! binaries (built with `cargo build`), the real control plane and its real node (worker
//! pods are containers of the worker image built from our binary), a real redis-server,
//! and helpers to wait on pools, read what workers wrote and crash or freeze a worker.
//! See [`Env`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use workpool_tests::cluster::{ClusterOptions, TestCluster, repo_root};
use workpool_tests::controlplane::ControlPlane;
use workpool_tests::node::{Node, NodeOptions, WORKER_REPOSITORY};
use workpool_worker::testing::{RedisServer, free_port};

pub use nix::sys::signal::Signal;

/// Generous wait for anything the operator does.
pub const T: Duration = Duration::from_secs(90);

/// `target/debug` of this build (the test executable lives in `target/debug/deps`).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| repo_root().join("target/debug"))
}

/// Builds the operator and the worker once per test process; their paths.
pub fn binaries() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        cargo_build(&["-p", "workpool-operator", "-p", "workpool-worker", "--bins"])?;
        Ok((
            bin_dir().join("workpool-operator"),
            bin_dir().join("workpool-worker"),
        ))
    });
    r.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// `cargo build -q <args>` in the workspace (debug, into [`bin_dir`]), up to 20 minutes.
pub fn cargo_build(args: &[&str]) -> Result<(), String> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-q"])
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::null());
    // What cargo set for this test process is not the environment of a build: build
    // scripts that track such a variable (ring's tracks CARGO_MANIFEST_DIR) would be
    // rebuilt here and again by the next plain `cargo` command, and so on.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*key)
        {
            cargo.env_remove(&*key);
        }
    }
    let mut build = cargo.spawn().map_err(|e| format!("cargo build: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let ok = loop {
        match build.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = build.kill();
                let _ = build.wait();
                break false;
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("cargo build {} failed", args.join(" ")))
    }
}

/// The WorkPool API of a namespace, untyped (the tests speak the wire format).
pub fn pools_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workpool.dev", "v1alpha1", "WorkPool"),
        "workpools",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A running `workpool-operator` process; SIGTERM (then SIGKILL) on drop.
pub struct Operator {
    pub child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator against `cluster` with test-friendly timings and `extra` args.
    pub fn start(cluster: &TestCluster, name: &str, extra: &[&str]) -> Operator {
        Self::start_with_kubeconfig(cluster, cluster.kubeconfig_path(), name, extra)
    }

    pub fn start_with_kubeconfig(
        cluster: &TestCluster,
        kubeconfig: &Path,
        name: &str,
        extra: &[&str],
    ) -> Operator {
        let (op, _) = binaries();
        let port = free_port().expect("free port");
        let log = cluster.temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let port_s = format!("127.0.0.1:{port}");
        // Each test's operator watches its own namespace only: on a shared real API
        // server the operators of parallel tests must not act on each other's pools.
        let defaults: [(&str, &str); 10] = [
            ("--namespace", cluster.namespace()),
            ("--metrics-addr", &port_s),
            ("--lease-namespace", cluster.namespace()),
            ("--lease-duration", "4"),
            ("--lease-renew-deadline", "3"),
            ("--lease-retry-period", "1"),
            ("--queue-poll-interval", "1"),
            ("--replacement-backoff-ms", "200"),
            ("--replacement-backoff-reset", "30"),
            ("--identity", name),
        ];
        let mut args: Vec<String> = Vec::new();
        for (flag, value) in defaults {
            if !extra
                .iter()
                .any(|e| *e == flag || e.starts_with(&format!("{flag}=")))
            {
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
        let child = Command::new(op)
            .args(&args)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,workpool_operator=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("operator starts");
        Operator {
            child: Some(child),
            metrics_port: port,
            log,
        }
    }

    /// GET a path of the operator's HTTP server; (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let r = reqwest::get(&url).await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    /// The value of a metric line starting with `series` (e.g. `workpool_leader`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        metric_value(&body, series)
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no cleanup (a crashed operator).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status (up to 20 s, then SIGKILL).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- operator log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        self.terminate();
    }
}

/// The value of the first line of a Prometheus text body that starts with `series`.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| {
            l.starts_with(series) && matches!(l.as_bytes().get(series.len()), Some(b' ' | b'{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The directory of a worker container where [`Env::out_dir`] is mounted (a hostPath
/// volume of every pool made by [`Env::script_pool`]): what a handler writes there, the
/// test reads on the host.
pub const OUT_IN_POD: &str = "/out";

/// The label and taint key of the nodes of [`Env::start_own_node`] (value: the namespace).
pub const OWN_NODE_LABEL: &str = "workpool.dev/test-node";

/// Everything a scenario needs: its own namespace on the real control plane, the real
/// node its pods run on (shared by the tests of this binary), a real redis-server that
/// both the host and the pods reach, and the worker binary for `submit`.
///
/// - Pools made by [`Env::exec_pool`] / [`Env::script_pool`] are worker containers of the
///   worker image (our binary, busybox `sh`) with the `/readyz` readiness probe; their
///   `--exec` script can write to [`OUT_IN_POD`], which is [`Env::out_dir`] on the host
///   ([`Env::done_lines`] reads what [`Env::exec_pool`] writes there).
/// - A worker is crashed or frozen from the host through the node:
///   [`Env::signal_worker`] (`SIGKILL`, `SIGSTOP`, `SIGCONT`) to its container's process.
/// - Queue URLs given to pools must be [`Env::redis_url`] (the host address pods reach);
///   `env.redis.url()` is loopback, which a pod cannot reach. Another server for a test:
///   [`Env::start_redis`], its URL [`RedisServer::url_on_also`].
pub struct Env {
    pub cluster: TestCluster,
    pub node: &'static Node,
    pub redis: RedisServer,
    pub client: kube::Client,
    pub ns: String,
    pub worker: PathBuf,
    out_dir: PathBuf,
}

impl Env {
    pub async fn start() -> Env {
        let (_, worker) = binaries();
        // The operator suites always run on the local real control plane: they need its
        // node (a test crashes workers through it).
        let cluster = TestCluster::start_real(ClusterOptions::default())
            .await
            .expect("the real control plane");
        let node = cluster
            .shared_node()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "operator e2e: namespace {} on node {} (Ready in {:.1}s)",
            cluster.namespace(),
            node.name(),
            node.started_in().as_secs_f64()
        );
        let redis = RedisServer::start_also_on(IpAddr::V4(node.host_ip())).expect("redis-server");
        let client = cluster.client();
        let ns = cluster.namespace().to_string();
        let out_dir = cluster.temp_dir().join("out");
        std::fs::create_dir_all(&out_dir).expect("out dir");
        // The workers run as a non-root user.
        std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777))
            .expect("out dir mode");
        Env {
            cluster,
            node,
            redis,
            client,
            ns,
            worker,
            out_dir,
        }
    }

    /// A real node of this test's own (blocking for a few seconds): labelled and tainted
    /// `workpool.dev/test-node=<namespace>:NoSchedule`, so that only pools given
    /// [`Env::on_own_node`] run there and no other test's pods land on it. Dropping it
    /// stops it (its pods' containers die with it and the Node object is deleted), as a
    /// node that goes away; `kubectl drain` drains it like any node.
    pub async fn start_own_node(&self) -> Node {
        let ns = self.ns.clone();
        // Its pods reach the test's Redis where the shared node's pods do.
        let redis_address = self.node.host_ip();
        tokio::task::spawn_blocking(move || {
            let cp = ControlPlane::shared()?;
            let options = NodeOptions::new()
                .label(OWN_NODE_LABEL, &ns)
                .taint(&format!("{OWN_NODE_LABEL}={ns}"), "NoSchedule");
            let node = Node::start(&cp, options)?;
            node.route_to_host(redis_address)?;
            Ok::<_, anyhow::Error>(node)
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("a node of the test's own: {e:#}"))
    }

    /// What to merge into a pool's spec (`extra_spec`) so that its pods run on the nodes
    /// of [`Env::start_own_node`] and nowhere else.
    pub fn on_own_node(&self) -> Value {
        json!({"template": {"spec": {
            "nodeSelector": {OWN_NODE_LABEL: self.ns},
            "tolerations": [{"key": OWN_NODE_LABEL, "operator": "Equal", "value": self.ns,
                             "effect": "NoSchedule"}]
        }}})
    }

    /// The test's Redis as pods (and the host) reach it: give this to pools.
    pub fn redis_url(&self) -> String {
        self.redis.url_on_also()
    }

    /// Another redis-server reachable from pods (its URL: `url_on_also()`).
    pub fn start_redis(&self) -> RedisServer {
        RedisServer::start_also_on(IpAddr::V4(self.node.host_ip())).expect("redis-server")
    }

    pub fn pools(&self) -> Api<DynamicObject> {
        pools_api(&self.client, &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The host directory mounted at [`OUT_IN_POD`] in the workers of [`Env::script_pool`].
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// A file the pool's `--exec` handler appends each payload to (one line per task),
    /// on the host.
    pub fn done_file(&self, pool: &str) -> PathBuf {
        self.out_dir.join(format!("{pool}.done"))
    }

    /// [`Env::done_file`] as the worker containers see it (for scripts).
    pub fn done_file_in_pod(&self, pool: &str) -> String {
        format!("{OUT_IN_POD}/{pool}.done")
    }

    /// A WorkPool whose workers append each payload to `done_file(pool)` after `sleep_s`.
    pub fn exec_pool(&self, pool: &str, replicas: i32, sleep_s: f64, extra_spec: Value) -> Value {
        let out = self.done_file_in_pod(pool);
        let script = if sleep_s > 0.0 {
            format!("p=$(cat); sleep {sleep_s}; printf '%s\\n' \"$p\" >> {out}")
        } else {
            format!("p=$(cat); printf '%s\\n' \"$p\" >> {out}")
        };
        self.script_pool(pool, replicas, &script, extra_spec)
    }

    /// A WorkPool whose workers run `script` (busybox `sh`) per task, payload on stdin,
    /// one task at a time, with [`OUT_IN_POD`] mounted; `extra_spec` is merged into the
    /// spec (objects merged, anything else replaced).
    pub fn script_pool(&self, pool: &str, replicas: i32, script: &str, extra_spec: Value) -> Value {
        let mut spec = json!({
            "queue": {"redis": {"url": self.redis_url()}},
            "replicas": replicas,
            "delivery": {"visibilityTimeoutSeconds": 5, "maxDeliveries": 5},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [{
                    "name": "worker",
                    "image": worker_image(),
                    "args": ["run"],
                    "env": [
                        {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"},
                        {"name": "WORKPOOL_EXEC", "value": script},
                        {"name": "WORKPOOL_CONCURRENCY", "value": "1"},
                        {"name": "WORKPOOL_SHUTDOWN_GRACE", "value": "10"}
                    ],
                    "ports": [{"name": "metrics", "containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"},
                                       "periodSeconds": 1},
                    "volumeMounts": [{"name": "out", "mountPath": OUT_IN_POD}]
                }],
                "volumes": [{"name": "out", "hostPath": {
                    "path": self.out_dir.display().to_string(), "type": "Directory"
                }}]
            }}
        });
        merge(&mut spec, &extra_spec);
        json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": pool, "namespace": self.ns},
            "spec": spec
        })
    }

    /// Creates (server-side applies) a pool.
    pub async fn apply_pool(&self, pool: &Value) {
        let name = pool["metadata"]["name"].as_str().expect("name");
        self.pools()
            .patch(
                name,
                &PatchParams::apply("workpool-tests").force(),
                &Patch::Apply(pool),
            )
            .await
            .unwrap_or_else(|e| panic!("applying WorkPool {name}: {e}"));
    }

    /// Adds tasks to a stream of the test's Redis with the real `workpool-worker submit`.
    pub fn submit(&self, stream: &str, payloads: &[String]) {
        submit_to(&self.worker, &self.redis.url(), stream, payloads);
    }

    /// `redis-cli` against the test's server.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Lines in the pool's done file.
    pub fn done_lines(&self, pool: &str) -> Vec<String> {
        std::fs::read_to_string(self.done_file(pool))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until each payload appears at least once in the pool's done file.
    pub async fn wait_done(&self, pool: &str, payloads: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.done_lines(pool);
            let missing: Vec<&String> = payloads.iter().filter(|p| !lines.contains(p)).collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {} tasks of {pool} never ran, e.g. {:?}",
                    missing.len(),
                    payloads.len(),
                    missing.first()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pool's pods (not terminating unless `all`).
    pub async fn pool_pods(&self, pool: &str, all: bool) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("workpool.dev/pool={pool}"));
        self.pods()
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| all || p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// The container ID (`containerd://...`) of `container` of pod `pod`, while it runs.
    pub async fn container_id(&self, pod: &str, container: &str) -> Option<String> {
        let p = self.pods().get_opt(pod).await.ok().flatten()?;
        p.status?
            .container_statuses?
            .into_iter()
            .find(|c| c.name == container)
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .and_then(|c| c.container_id)
    }

    /// Sends `signal` from the host to the main process of pod `pod`'s `worker`
    /// container (the `workpool-worker` process, PID 1 of its container): `SIGKILL` is a
    /// crash mid-task (the container exits 137; with `restartPolicy: Never` the pod
    /// fails), `SIGSTOP` freezes the worker with its connections open, `SIGCONT` thaws it.
    pub async fn signal_worker(&self, pod: &str, signal: Signal) {
        let id = self
            .container_id(pod, "worker")
            .await
            .unwrap_or_else(|| panic!("pod {pod} has no running worker container"));
        self.node
            .signal_container(&id, signal)
            .unwrap_or_else(|e| panic!("{signal} to the worker of {pod}: {e:#}"));
    }

    /// What pod `pod`'s worker container wrote (every run of it), from the node.
    pub fn worker_log(&self, pod: &str) -> String {
        self.node
            .container_log(&self.ns, pod, "worker")
            .unwrap_or_default()
    }

    /// The pool as JSON.
    pub async fn pool(&self, pool: &str) -> Option<Value> {
        self.pools()
            .get_opt(pool)
            .await
            .ok()
            .flatten()
            .and_then(|p| serde_json::to_value(p).ok())
    }

    /// Waits until `cond` holds for the pool's JSON; returns it.
    pub async fn wait_pool(
        &self,
        pool: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(v) = self.pool(pool).await {
                if cond(&v) {
                    return v;
                }
                last = v;
            }
            if Instant::now() > deadline {
                panic!(
                    "WorkPool {pool}: {what} not reached in {timeout:?}; last: {}",
                    serde_json::to_string_pretty(&last["status"]).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the pool has exactly `n` ready, non-terminating pods and says so in its status.
    pub async fn wait_ready(&self, pool: &str, n: i64) -> Value {
        self.wait_pool(pool, &format!("{n} ready replicas"), T, |v| {
            let s = &v["status"];
            s["readyReplicas"] == json!(n)
                && s["replicas"] == json!(n)
                && s["desiredReplicas"] == json!(n)
                && cond_status(v, "Ready") == Some("True".into())
        })
        .await
    }

    /// Consumers of a group: name -> pending.
    pub fn consumers(&self, stream: &str, group: &str) -> BTreeMap<String, u64> {
        let out = self.redis_cli(&["XINFO", "CONSUMERS", stream, group]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut res = BTreeMap::new();
        let mut i = 0;
        let mut name = None;
        while i + 1 < lines.len() {
            match lines[i] {
                "name" => name = Some(lines[i + 1].to_string()),
                "pending" => {
                    if let Some(n) = name.take() {
                        res.insert(n, lines[i + 1].parse().unwrap_or(0));
                    }
                }
                _ => {}
            }
            i += 1;
        }
        res
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The last lines of every worker's log in the test's namespace.
        let Ok(dir) = std::fs::read_dir(self.node.dir().join("pod-logs")) else {
            return;
        };
        let prefix = format!("{}_", self.ns);
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pod) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.rsplit_once('_'))
                .map(|(pod, _uid)| pod.to_string())
            else {
                continue;
            };
            let text = self.worker_log(&pod);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            eprintln!("---- worker log of {pod} ----\n{tail}");
        }
    }
}

/// The worker image as the node has it (built from `target/debug/workpool-worker`),
/// under the chart's tag (a tag, not `latest`: nothing is pulled).
pub fn worker_image() -> String {
    format!("{WORKER_REPOSITORY}:{}", chart_app_version())
}

/// The chart's appVersion, the tag the node's images carry.
fn chart_app_version() -> String {
    let chart = repo_root().join("charts/workpool/Chart.yaml");
    std::fs::read_to_string(chart)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("appVersion:")
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "0.1.0".into())
}

/// Adds tasks to `stream` on the Redis at `url` with the real `workpool-worker submit`.
pub fn submit_to(worker: &Path, url: &str, stream: &str, payloads: &[String]) {
    let mut child = Command::new(worker)
        .args(["submit", "--redis-url", url, "--stream", stream])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("submit runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for p in payloads {
            writeln!(stdin, "{p}").expect("write");
        }
    }
    assert!(
        child.wait().expect("submit exits").success(),
        "submit failed"
    );
}

/// The status of condition `type_` of a pool JSON.
pub fn cond_status(v: &Value, type_: &str) -> Option<String> {
    cond(v, type_).and_then(|c| c["status"].as_str().map(str::to_string))
}

/// Condition `type_` of a pool JSON.
pub fn cond(v: &Value, type_: &str) -> Option<Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// JSON merge (objects merged recursively, everything else replaced).
pub fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// `n` distinct payloads tagged `tag`.
pub fn payloads(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"task\":\"{tag}-{i}\"}}"))
        .collect()
}

/// Whether the pod is Ready.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `f` until it returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `operator/rbac.yaml` with the ServiceAccount, Lease namespace and cluster-scoped names
/// of this test's namespace.
pub fn rbac_objects(ns: &str, sa: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("operator/rbac.yaml"))
        .expect("operator/rbac.yaml");
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        if kind.starts_with("Cluster") {
            let name = format!("{}-{ns}", v["metadata"]["name"].as_str().unwrap_or(""));
            v["metadata"]["name"] = json!(name);
        } else {
            v["metadata"]["namespace"] = json!(ns);
        }
        if kind == "ClusterRoleBinding" {
            let role = format!("{}-{ns}", v["roleRef"]["name"].as_str().unwrap_or(""));
            v["roleRef"]["name"] = json!(role);
        }
        if let Some(subjects) = v.get_mut("subjects").and_then(|s| s.as_array_mut()) {
            for s in subjects {
                s["namespace"] = json!(ns);
                s["name"] = json!(sa);
            }
        }
        out.push(v);
    }
    out
}

/// A ServiceAccount `sa` in the test's namespace with exactly `operator/rbac.yaml`'s
/// rights (cluster-scoped objects renamed per namespace, deleted when the test ends);
/// returns a kubeconfig with its token.
pub async fn documented_rbac(env: &Env, sa: &str) -> std::path::PathBuf {
    let ns = env.ns.clone();
    env.cluster
        .apply_object(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}))
        .await
        .expect("sa");
    for obj in rbac_objects(&ns, sa) {
        let kind = obj["kind"].as_str().unwrap_or("");
        if kind.starts_with("Cluster") {
            let plural = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "clusterrolebindings"
            };
            env.cluster.delete_on_drop(&format!(
                "/apis/rbac.authorization.k8s.io/v1/{plural}/{}",
                obj["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
        env.cluster.apply_object(&obj).await.expect("rbac object");
    }
    env.cluster
        .service_account_kubeconfig(&ns, sa)
        .await
        .expect("token")
}
