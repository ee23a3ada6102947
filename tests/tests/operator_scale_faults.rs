//! The operator at scale under faults (issue #19), bounded for CI: 50 WorkPools on KWOK
//! nodes of the real control plane, two operator replicas with leader election, tasks
//! flowing through four of the pools, and one fault after another:
//!
//! 1. SIGKILL of the leading operator (it comes back as the standby);
//! 2. a restart of kube-apiserver;
//! 3. etcd frozen (SIGSTOP) for longer than the lease;
//! 4. a restart of Redis (append-only, every write on disk);
//! 5. every pod of one node deleted at once;
//! 6. the task pools scaled in (3 -> 1) while their workers hold tasks.
//!
//! KWOK moves the pods through their lifecycle; the pods of the task pools also run as
//! processes: the test starts each one's worker container (its args and WORKPOOL_*
//! environment, the consumer named after the pod) once KWOK says Running, and SIGTERMs it
//! when the pod is deleted, as a kubelet would.
//!
//! Invariants, checked continuously from watches (not at the end):
//! - no pool ever has more pods than its bound: the idle pools are autoscaled with
//!   `minReplicas = maxReplicas`, and their pods, terminating ones counted (those past
//!   their deletion deadline + 30 s excepted), never exceed `maxReplicas`; the task pools
//!   have fixed `replicas` (the ReplicaSet's contract: a terminating pod is replaced at
//!   once), and their pods not terminating never exceed the largest `replicas` they had;
//!   no rollout happens here, so no surge is allowed;
//! - no busy pod is deleted by the operator while an idle pod of the same pool exists
//!   (busy: its consumer holds a task, read from Redis when the deletion is seen);
//! - no standby writes: every write of an operator replica (the API server's audit log,
//!   by the replica's own user) was received while that replica held the Lease (its
//!   holder and acquireTime, from a watch of the Lease);
//! - after each fault every pool converges (its pods Running and Ready, its status says
//!   so) within lease duration + one poll + [`SLACK`];
//! - every task completes or is dead-lettered (streams and pending lists empty at the end);
//! - pods created per pool <= its replicas + the pods of it this test deleted (no
//!   duplicate creation from a stale cache after a failover).
//!
//! The failover gaps and convergence times are printed (BENCHMARKS.md reports them).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use workpool_tests::cluster::{client_for, repo_root};
use workpool_tests::controlplane::{self, ControlPlane, ControlPlaneOptions, free_port};
use workpool_worker::queue::{NewTask, Queue};
use workpool_worker::testing::{Persistence, RedisServer};

const NS: &str = "wpfault";
const LEASE_NS: &str = "workpool-system";
const LEASE_NAME: &str = "workpool-operator";
const POOL_LABEL: &str = "workpool.dev/pool";
const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
const NODES: [&str; 2] = ["kwok-a", "kwok-b"];
/// Pools without tasks (autoscaled, minReplicas = maxReplicas), and their size.
const IDLE_POOLS: usize = 46;
const IDLE_REPLICAS: i64 = 2;
/// Pools with tasks flowing, their replicas before and after the scale-in.
const TASK_POOLS: usize = 4;
const TASK_REPLICAS: i64 = 3;
const TASK_REPLICAS_AFTER: i64 = 1;
/// Operator timings: the Lease, its renew deadline, the queue poll.
const LEASE_S: u64 = 8;
const RENEW_S: u64 = 5;
const POLL_S: u64 = 1;
/// N of "converges within lease + one poll + N s": a loaded 2-core CI machine runs the
/// control plane, KWOK, two operators and the workers; a stalled etcd also leaves the API
/// server's watch caches to catch up.
const SLACK: Duration = Duration::from_secs(90);
/// The operator replicas: identity and user (each its own client certificate).
const REPLICAS: [(&str, &str); 2] = [("op-a", "wpfault-op-a"), ("op-b", "wpfault-op-b")];

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[scale-faults +{:.1}s] {}",
        started().elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

fn started() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn pool_name(i: usize) -> String {
    if i < TASK_POOLS {
        format!("task-{i:02}")
    } else {
        format!("idle-{i:02}")
    }
}

fn is_task_pool(pool: &str) -> bool {
    pool.starts_with("task-")
}

/// What is missing to run, or `None`. Under CI=true a missing component fails the test.
fn missing_prerequisite() -> Option<String> {
    if let Some(r) = controlplane::unavailable_reason() {
        return Some(r);
    }
    let out = Command::new(repo_root().join("scripts/kwok-bin.sh"))
        .arg("--check")
        .status();
    if !out.is_ok_and(|s| s.success()) {
        return Some("KWOK is not built (run scripts/kwok-bin.sh; make deps does)".into());
    }
    None
}

fn kwok_dir() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/kwok-bin.sh"))
        .arg("--dir")
        .output()
        .expect("scripts/kwok-bin.sh --dir");
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    )
}

/// Builds the operator and the worker in this test's profile; their paths.
fn binaries() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-q",
        "-p",
        "workpool-operator",
        "-p",
        "workpool-worker",
        "--bins",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.current_dir(repo_root()).status().expect("cargo build");
    assert!(
        st.success(),
        "cargo build -p workpool-operator -p workpool-worker failed"
    );
    (dir.join("workpool-operator"), dir.join("workpool-worker"))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The pid of this control plane's component `exe` (its command line names the control
/// plane's directory).
fn component_pid(cp: &ControlPlane, exe: &str) -> Option<u32> {
    let dir = cp.dir().to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        let first = cmd.split('\0').next()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        (!zombie && first.ends_with(&format!("/{exe}")) && cmd.contains(&dir)).then_some(pid)
    })
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
        Err(_) => true,
    }
}

/// kube-apiserver as a process of this test: the control plane's own is replaced by one
/// with the same flags plus an audit log (restarted the same way for the fault).
struct ApiServer {
    exe: String,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    pids: PathBuf,
}

impl ApiServer {
    fn take_over(cp: &ControlPlane, extra: &[String]) -> ApiServer {
        let pid = component_pid(cp, "kube-apiserver").expect("kube-apiserver pid");
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let mut words: Vec<String> = String::from_utf8_lossy(&cmd)
            .split('\0')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        let exe = words.remove(0);
        words.extend(extra.iter().cloned());
        // Its graceful shutdown drains in-flight requests (up to a minute on a loaded
        // machine); the replacement only needs the port, so SIGKILL after a while.
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        wait_for(
            || gone(pid),
            Duration::from_secs(30),
            "the control plane's kube-apiserver to stop",
        );
        let mut s = ApiServer {
            exe,
            args: words,
            child: None,
            log: cp.dir().join("kube-apiserver-test.log"),
            pids: cp.dir().join("pids"),
        };
        s.start(cp);
        s
    }

    fn start(&mut self, cp: &ControlPlane) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let err = out.try_clone().expect("log");
        let child = Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("kube-apiserver starts");
        // The control plane's watchdog stops it should this process die.
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.pids) {
            let _ = writeln!(f, "{}", child.id());
        }
        self.child = Some(child);
        wait_for(
            || {
                cp.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"])
                    .is_ok()
            },
            Duration::from_secs(120),
            "kube-apiserver /readyz",
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(mut f: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn terminate(&mut self) {
        if let Some(c) = &self.0 {
            signal(c.id(), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pod as the checker sees it.
#[derive(Debug, Clone)]
struct PodInfo {
    pool: String,
    uid: String,
    node: Option<String>,
    running_ready: bool,
    deletion_ms: Option<i64>,
    /// The worker container: args and WORKPOOL_* environment (task pools' pods run it).
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn pod_info(p: &Pod) -> Option<(String, PodInfo)> {
    let name = p.metadata.name.clone()?;
    let pool = p.metadata.labels.as_ref()?.get(POOL_LABEL)?.clone();
    let st = p.status.as_ref();
    let running = st.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = p.spec.as_ref();
    let container = spec.and_then(|s| s.containers.first());
    let env = container
        .and_then(|c| c.env.as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    if let Some(v) = &e.value {
                        return Some((e.name.clone(), v.clone()));
                    }
                    let field = e.value_from.as_ref()?.field_ref.as_ref()?;
                    (field.field_path == "metadata.name").then(|| (e.name.clone(), name.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    Some((
        name.clone(),
        PodInfo {
            pool,
            uid: p.metadata.uid.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            running_ready: running && ready,
            deletion_ms: p
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond()),
            args: container.and_then(|c| c.args.clone()).unwrap_or_default(),
            env,
        },
    ))
}

/// Everything the watches saw and the invariants they broke.
#[derive(Default)]
struct State {
    pods: HashMap<String, PodInfo>,
    relist: Option<HashSet<String>>,
    /// pool -> uids of every pod of it ever seen.
    created: HashMap<String, HashSet<String>>,
    /// pool -> the most pods seen at once (terminating included).
    peak: HashMap<String, usize>,
    /// pool -> its bound (maxReplicas; for a `replicas` pool the largest replicas it had).
    bound: HashMap<String, usize>,
    /// Autoscaled pools: terminating pods count against their bound.
    autoscaled: HashSet<String>,
    /// pool -> its replicas now.
    replicas: HashMap<String, usize>,
    /// pods this test deleted (their pool).
    test_deleted: HashMap<String, String>,
    /// pods whose deletion was seen.
    deletion_seen: HashSet<String>,
    /// pool -> status says ready == replicas for its generation.
    pool_ready: HashMap<String, bool>,
    /// Lease versions: (acquireTime in ms, holder).
    leases: Vec<(i64, String)>,
    violations: Vec<String>,
    /// Deletions by the operator of task pools' pods: (pod, pool), checked against Redis.
    operator_deletions: Vec<(String, String)>,
    /// Pods a worker process should run for / stop.
    to_start: Vec<String>,
    to_stop: Vec<String>,
}

impl State {
    fn counted(&self, pool: &str, now_ms: i64) -> usize {
        let terminating_count = self.autoscaled.contains(pool);
        self.pods
            .values()
            .filter(|p| p.pool == pool)
            // A pod past its deletion deadline + 30 s no longer counts (contract #14); a
            // `replicas` pool replaces a terminating pod at once, as a ReplicaSet does.
            .filter(|p| {
                p.deletion_ms
                    .is_none_or(|d| terminating_count && now_ms < d + 30_000)
            })
            .count()
    }

    fn check_bound(&mut self, pool: &str) {
        let now_ms = now_ms();
        let n = self.counted(pool, now_ms);
        let peak = self.peak.entry(pool.to_string()).or_default();
        *peak = (*peak).max(n);
        let bound = self.bound.get(pool).copied().unwrap_or(0);
        if n > bound {
            let counted = if self.autoscaled.contains(pool) {
                "terminating counted"
            } else {
                "not terminating"
            };
            let v = format!("pool {pool} has {n} pods ({counted}), bound {bound}");
            log(format!("VIOLATION: {v}"));
            self.violations.push(v);
        }
    }

    fn apply(&mut self, name: String, info: PodInfo) {
        let pool = info.pool.clone();
        self.created
            .entry(pool.clone())
            .or_default()
            .insert(info.uid.clone());
        if let Some(r) = &mut self.relist {
            r.insert(name.clone());
        }
        if info.deletion_ms.is_some() {
            self.deleted(&name, &pool);
        } else if is_task_pool(&pool) && info.running_ready {
            self.to_start.push(name.clone());
        }
        self.pods.insert(name, info);
        if self.relist.is_none() {
            self.check_bound(&pool);
        }
    }

    fn deleted(&mut self, name: &str, pool: &str) {
        if !self.deletion_seen.insert(name.to_string()) {
            return;
        }
        if is_task_pool(pool) {
            if !self.test_deleted.contains_key(name) {
                self.operator_deletions
                    .push((name.to_string(), pool.to_string()));
            }
            self.to_stop.push(name.to_string());
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(p) = self.pods.remove(name) {
            self.deleted(name, &p.pool.clone());
        }
    }

    /// Pools that are not converged: (pool, why).
    fn unconverged(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (pool, want) in &self.replicas {
            let pods: Vec<&PodInfo> = self.pods.values().filter(|p| &p.pool == pool).collect();
            let live = pods.iter().filter(|p| p.deletion_ms.is_none()).count();
            let ready = pods
                .iter()
                .filter(|p| p.deletion_ms.is_none() && p.running_ready)
                .count();
            let status = self.pool_ready.get(pool).copied().unwrap_or(false);
            if live != *want || ready != *want || pods.len() != *want || !status {
                out.push((
                    pool.clone(),
                    format!(
                        "{} pods ({live} live, {ready} ready) of {want}, status ready: {status}",
                        pods.len()
                    ),
                ));
            }
        }
        out.sort();
        out
    }

    fn holder_at(&self, ms: i64) -> Option<&str> {
        self.leases
            .iter()
            .filter(|(t, _)| *t <= ms)
            .max_by_key(|(t, _)| *t)
            .map(|(_, h)| h.as_str())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn watch_pods(client: kube::Client, state: Shared) {
    let api: Api<Pod> = Api::namespaced(client, NS);
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(POOL_LABEL)).default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { continue };
            let mut st = lock(&state);
            match ev {
                Event::Init => st.relist = Some(HashSet::new()),
                Event::InitApply(p) | Event::Apply(p) => {
                    if let Some((name, info)) = pod_info(&p) {
                        st.apply(name, info);
                    }
                }
                Event::Delete(p) => {
                    if let Some(name) = p.metadata.name.as_deref() {
                        st.remove(name);
                    }
                }
                Event::InitDone => {
                    let seen = st.relist.take().unwrap_or_default();
                    let missing: Vec<String> = st
                        .pods
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for n in missing {
                        st.remove(&n);
                    }
                    let pools: Vec<String> = st.bound.keys().cloned().collect();
                    for p in pools {
                        st.check_bound(&p);
                    }
                }
            }
        }
    });
}

fn pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workpool.dev", "v1alpha1", "WorkPool"),
        "workpools",
    )
}

fn watch_pools(client: kube::Client, state: Shared) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NS, &pool_resource());
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(p) = s.next().await {
            let Ok(p) = p else { continue };
            let name = p.metadata.name.clone().unwrap_or_default();
            let spec = &p.data["spec"];
            let want = spec["autoscaling"]["maxReplicas"]
                .as_i64()
                .or_else(|| spec["replicas"].as_i64())
                .unwrap_or(0);
            let st = &p.data["status"];
            let ready = st["readyReplicas"].as_i64().unwrap_or(0) == want
                && st["replicas"].as_i64().unwrap_or(0) == want
                && st["observedGeneration"].as_i64() == p.metadata.generation;
            lock(&state).pool_ready.insert(name, ready);
        }
    });
}

fn watch_lease(client: kube::Client, state: Shared) {
    let api: Api<Lease> = Api::namespaced(client, LEASE_NS);
    let stream = watcher::watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}")),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(l) = s.next().await {
            let Ok(l) = l else { continue };
            let Some(spec) = l.spec else { continue };
            let (Some(holder), Some(at)) = (spec.holder_identity, spec.acquire_time) else {
                continue;
            };
            let at = at.0.as_millisecond();
            let mut st = lock(&state);
            if !st.leases.iter().any(|(t, h)| *t == at && *h == holder) {
                log(format!("lease acquired by {holder}"));
                st.leases.push((at, holder));
            }
        }
    });
}

/// One write of an operator replica, from the audit log.
struct AuditWrite {
    user: String,
    verb: String,
    what: String,
    received_ms: i64,
}

fn audit_writes(path: &Path) -> Vec<AuditWrite> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete" || e["stage"] == "Panic")
        .filter_map(|e| {
            let resource = e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // Competing for the Lease is what a standby does; access reviews are reads.
            if resource == "leases" || resource.ends_with("accessreviews") {
                return None;
            }
            let user = e["user"]["username"].as_str()?;
            if !REPLICAS.iter().any(|r| r.1 == user) {
                return None;
            }
            let t = e["requestReceivedTimestamp"].as_str()?;
            let received = t.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
            Some(AuditWrite {
                user: user.to_string(),
                verb: e["verb"].as_str()?.to_string(),
                what: format!(
                    "{} {}/{} ({})",
                    resource,
                    e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                    e["objectRef"]["name"].as_str().unwrap_or_default(),
                    e["responseStatus"]["code"]
                ),
                received_ms: received.as_millisecond(),
            })
        })
        .collect()
}

struct Operators {
    bin: PathBuf,
    kubeconfigs: Vec<PathBuf>,
    procs: Vec<Proc>,
    dir: PathBuf,
    restarts: usize,
    /// Processes started so far: each gets an identity of its own (`op-a-3`), as pods do,
    /// so that a restarted replica competes for the Lease instead of renewing its
    /// predecessor's.
    started: usize,
}

impl Operators {
    fn start(&mut self, i: usize) {
        self.started += 1;
        let identity = format!("{}-{}", REPLICAS[i].0, self.started);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{identity}.log")))
            .expect("log");
        let port = free_port().expect("port");
        let child = Command::new(&self.bin)
            .env("KUBECONFIG", &self.kubeconfigs[i])
            .env(
                "RUST_LOG",
                std::env::var("WPFAULT_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args([
                &format!("--namespace={NS}"),
                &format!("--lease-namespace={LEASE_NS}"),
                &format!("--identity={identity}"),
                &format!("--metrics-addr=127.0.0.1:{port}"),
                &format!("--lease-duration={LEASE_S}"),
                &format!("--lease-renew-deadline={RENEW_S}"),
                "--lease-retry-period=1",
                &format!("--queue-poll-interval={POLL_S}"),
                "--replacement-backoff-ms=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("operator starts");
        self.procs[i] = Proc(Some(child));
    }

    /// Restarts replicas that exited (a lost Lease exits the process), as a Deployment
    /// would.
    fn keep_running(&mut self) {
        for (i, (id, _)) in REPLICAS.iter().enumerate() {
            if self.procs[i].exited() {
                log(format!("operator {id} exited: starting it again"));
                self.restarts += 1;
                self.start(i);
            }
        }
    }
}

struct Workers {
    bin: PathBuf,
    procs: HashMap<String, Proc>,
    dir: PathBuf,
    /// Pods holding [`KUBELET_FINALIZER`] while their worker runs.
    held: HashSet<String>,
}

impl Workers {
    fn start(&mut self, pod: &str, info: &PodInfo) {
        if self.procs.contains_key(pod) {
            return;
        }
        let log = std::fs::File::create(self.dir.join(format!("{pod}.log"))).expect("log");
        let port = free_port().expect("port");
        let child = Command::new(&self.bin)
            .args(&info.args)
            .envs(info.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WORKPOOL_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("WORKPOOL_SHUTDOWN_GRACE", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("worker starts");
        self.procs.insert(pod.to_string(), Proc(Some(child)));
    }

    fn stop(&mut self, pod: &str) {
        if let Some(p) = self.procs.get_mut(pod) {
            p.terminate();
        }
    }

    fn reap(&mut self) {
        self.procs.retain(|_, p| !p.exited());
    }

    /// Pods whose worker has exited and that still hold the finalizer.
    fn exited_held(&self) -> Vec<String> {
        self.held
            .iter()
            .filter(|n| !self.procs.contains_key(*n))
            .cloned()
            .collect()
    }
}

/// What this test's kubelet puts on a task pod while its worker runs: a real kubelet keeps
/// a deleted pod's object until its containers have stopped, where KWOK removes it at
/// once. Without it the operator saw the pod gone, removed its consumer and its drain
/// field, and the still running worker took tasks again before this test stopped it.
const KUBELET_FINALIZER: &str = "wpfault.test/kubelet";

/// Sets or clears [`KUBELET_FINALIZER`]: `Some(true)` done, `Some(false)` refused for good
/// (the pod is gone, or deleted already: no finalizer can be added then), `None` to try
/// again (the API server is restarting).
async fn set_kubelet_finalizer(admin: &kube::Client, pod: &str, on: bool) -> Option<bool> {
    let api: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let finalizers: Vec<&str> = if on { vec![KUBELET_FINALIZER] } else { vec![] };
    match api
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await
    {
        Ok(_) => Some(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Some(false),
        Err(_) => None,
    }
}

struct Run {
    cp: Arc<ControlPlane>,
    admin: kube::Client,
    state: Shared,
    operators: Operators,
    workers: Workers,
    redis: RedisServer,
    redis_url: String,
    report: Vec<String>,
}

impl Run {
    /// Keeps the operators and workers going and checks the deletions of busy pods.
    async fn tend(&mut self) {
        self.operators.keep_running();
        let (start, stop, deletions) = {
            let mut st = lock(&self.state);
            let start: Vec<(String, PodInfo)> = std::mem::take(&mut st.to_start)
                .into_iter()
                .filter_map(|n| {
                    let info = st.pods.get(&n)?.clone();
                    (info.deletion_ms.is_none()).then_some((n, info))
                })
                .collect();
            (
                start,
                std::mem::take(&mut st.to_stop),
                std::mem::take(&mut st.operator_deletions),
            )
        };
        // A pod the operator deleted: was it busy while an idle pod of its pool was there?
        // (Read before its worker is stopped, which hands its tasks back.)
        let mut by_pool: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (pod, pool) in deletions {
            by_pool.entry(pool).or_default().push(pod);
        }
        for (pool, pods) in by_pool {
            let q = Queue::new(&pool, &pool);
            let Ok(mut c) =
                workpool_worker::queue::connect(&self.redis_url, Some(Duration::from_secs(5)))
                    .await
            else {
                continue;
            };
            let Ok(stats) = q.stats(&mut c).await else {
                continue;
            };
            let held: HashMap<&str, u64> = stats
                .consumers
                .iter()
                .map(|c| (c.name.as_str(), c.pending))
                .collect();
            let mut st = lock(&self.state);
            let idle: Vec<String> = st
                .pods
                .iter()
                .filter(|(_, p)| p.pool == pool && p.deletion_ms.is_none() && p.running_ready)
                .filter(|(n, _)| held.get(n.as_str()) == Some(&0))
                .map(|(n, _)| n.clone())
                .collect();
            for pod in &pods {
                let busy = held.get(pod.as_str()).copied().unwrap_or(0);
                if busy > 0 && !idle.is_empty() {
                    let v = format!(
                        "busy pod {pod} ({busy} tasks) deleted while {idle:?} of {pool} were idle"
                    );
                    log(format!("VIOLATION: {v}"));
                    st.violations.push(v);
                }
            }
        }
        for n in stop {
            self.workers.stop(&n);
        }
        for (n, info) in start {
            // Held before the worker starts (a pod already deleted cannot take it: then
            // its worker does not start either).
            match set_kubelet_finalizer(&self.admin, &n, true).await {
                Some(true) => {
                    self.workers.held.insert(n.clone());
                    self.workers.start(&n, &info);
                }
                Some(false) => {}
                None => lock(&self.state).to_start.push(n),
            }
        }
        self.workers.reap();
        for n in self.workers.exited_held() {
            if set_kubelet_finalizer(&self.admin, &n, false)
                .await
                .is_some()
            {
                self.workers.held.remove(&n);
            }
        }
    }

    /// For pools that did not converge: the pods and status the API server has now, what
    /// this test's watch holds, and every audited creation and deletion of their pods.
    async fn diagnose(&self, un: &[(String, String)]) -> String {
        let mut out = String::new();
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NS);
        let pools: Api<DynamicObject> =
            Api::namespaced_with(self.admin.clone(), NS, &pool_resource());
        let audit =
            std::fs::read_to_string(self.operators.dir.join("audit.log")).unwrap_or_default();
        for (pool, _) in un.iter().take(3) {
            out.push_str(&format!("---- pool {pool} ----\n"));
            let lp = kube::api::ListParams::default().labels(&format!("{POOL_LABEL}={pool}"));
            match pods.list(&lp).await {
                Ok(list) => {
                    for p in list {
                        let ready = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                            .map(|c| c.status.clone());
                        out.push_str(&format!(
                            "api pod {} rv {:?} phase {:?} ready {:?} deleting {}\n",
                            p.metadata.name.unwrap_or_default(),
                            p.metadata.resource_version,
                            p.status.as_ref().and_then(|s| s.phase.clone()),
                            ready,
                            p.metadata.deletion_timestamp.is_some()
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("pods: {e}\n")),
            }
            match pools.get(pool).await {
                Ok(wp) => out.push_str(&format!(
                    "status {}\n",
                    wp.data.get("status").cloned().unwrap_or_default()
                )),
                Err(e) => out.push_str(&format!("pool: {e}\n")),
            }
            for (name, info) in lock(&self.state)
                .pods
                .iter()
                .filter(|(_, i)| &i.pool == pool)
            {
                out.push_str(&format!(
                    "watched pod {name} ready {} deleting {:?}\n",
                    info.running_ready, info.deletion_ms
                ));
            }
            out.push_str(&operator_log_lines(&self.operators.dir, pool, 40));
            let prefix = format!("{pool}-");
            for e in audit
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["objectRef"]["resource"] == "pods")
                .filter(|e| {
                    e["objectRef"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                        || e["responseObject"]["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&prefix))
                        || e["requestURI"]
                            .as_str()
                            .is_some_and(|u| u.contains(&prefix))
                })
            {
                out.push_str(&format!(
                    "audit {} {} {} {} {}\n",
                    e["requestReceivedTimestamp"].as_str().unwrap_or_default(),
                    e["user"]["username"].as_str().unwrap_or_default(),
                    e["verb"].as_str().unwrap_or_default(),
                    e["objectRef"]["name"].as_str().unwrap_or_default(),
                    e["responseStatus"]["code"]
                ));
            }
        }
        out
    }

    /// Waits until every pool has converged; the time it took from `since`.
    async fn converge(&mut self, what: &str, since: Instant) -> Duration {
        let bound = Duration::from_secs(LEASE_S + POLL_S) + SLACK;
        let mut last = Instant::now();
        loop {
            self.tend().await;
            let un = lock(&self.state).unconverged();
            if un.is_empty() {
                let took = since.elapsed();
                log(format!("{what}: converged in {:.1}s", took.as_secs_f64()));
                self.report
                    .push(format!("{what}: converged {:.1} s", took.as_secs_f64()));
                return took;
            }
            if since.elapsed() > bound {
                // The operators' own account (the control plane's directory, where they
                // log, goes with it).
                eprintln!("{}", operator_log_tails(&self.operators.dir));
                eprintln!("{}", self.diagnose(&un).await);
                panic!(
                    "{what}: not converged within lease {LEASE_S} s + poll {POLL_S} s + {} s; {} pools: {:?}\nviolations: {:?}",
                    SLACK.as_secs(),
                    un.len(),
                    &un[..un.len().min(5)],
                    lock(&self.state).violations
                );
            }
            if last.elapsed() > Duration::from_secs(10) {
                last = Instant::now();
                log(format!(
                    "{what}: {} pools not converged, e.g. {:?}",
                    un.len(),
                    un.first()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn leader(&self) -> Option<usize> {
        let st = lock(&self.state);
        let (_, holder) = st.leases.iter().max_by_key(|(t, _)| *t)?;
        REPLICAS
            .iter()
            .position(|(id, _)| holder.starts_with(&format!("{id}-")))
    }

    /// Deletes one pod of an idle pool (as if it failed), so that converging after a fault
    /// needs the operator to act.
    async fn disturb(&mut self) {
        let victim = {
            let st = lock(&self.state);
            let mut live: Vec<(&String, &PodInfo)> = st
                .pods
                .iter()
                .filter(|(_, p)| !is_task_pool(&p.pool) && p.deletion_ms.is_none())
                .collect();
            live.sort_by_key(|(n, _)| n.as_str());
            live.get(st.test_deleted.len() % live.len().max(1))
                .map(|(n, p)| ((*n).clone(), p.pool.clone()))
        };
        if let Some((pod, pool)) = victim {
            lock(&self.state).test_deleted.insert(pod.clone(), pool);
            let api: Api<Pod> = Api::namespaced(self.admin.clone(), NS);
            api.delete(&pod, &DeleteParams::default())
                .await
                .expect("delete a pod");
        }
    }

    async fn patch_replicas(&mut self, pool: &str, n: i64) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.admin.clone(), NS, &pool_resource());
        api.patch(
            pool,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .expect("scale");
        lock(&self.state)
            .replicas
            .insert(pool.to_string(), n as usize);
    }
}

async fn apply_yaml(cp: &Arc<ControlPlane>, dir: &Path, name: &str, yaml: &str) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write manifest");
    let cp = cp.clone();
    tokio::task::spawn_blocking(move || cp.kubectl(&["apply", "-f", &path.to_string_lossy()]))
        .await
        .expect("join")
        .expect("kubectl apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_pools_keep_their_invariants_through_failover_control_plane_redis_and_node_faults() {
    started();
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let (operator_bin, worker_bin) = tokio::task::spawn_blocking(binaries).await.expect("join");
    let kwok = kwok_dir();
    let cp = Arc::new(
        tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default()))
            .await
            .expect("join")
            .expect("control plane starts"),
    );
    let work = cp.dir().join("scale-faults");
    std::fs::create_dir_all(work.join("workers")).expect("dir");

    // kube-apiserver again, with an audit log of the operator replicas' writes (and of
    // every pod creation and deletion, whoever made it: a failure names who did what).
    let policy = work.join("audit-policy.yaml");
    let users: Vec<&str> = REPLICAS.iter().map(|r| r.1).collect();
    std::fs::write(
        &policy,
        format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    users: {users:?}\n    verbs: [create, update, patch, delete, deletecollection]\n  - level: Metadata\n    resources: [{{group: \"\", resources: [pods]}}]\n    verbs: [create, delete, deletecollection]\n  - level: None\n"
        ),
    )
    .expect("policy");
    let audit = work.join("audit.log");
    let extra = vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit.display()),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
    ];
    let mut apiserver = {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || ApiServer::take_over(&cp, &extra))
            .await
            .expect("join")
    };
    let admin = client_for(cp.admin_kubeconfig())
        .await
        .expect("admin client");

    // Namespaces, CRD, RBAC for both replicas' users.
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    for ns in [NS, LEASE_NS] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
        ns_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("namespace");
    }
    let crd = repo_root().join("crds/workpool.yaml");
    let rbac = repo_root().join("operator/rbac.yaml");
    {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || {
            cp.kubectl(&["apply", "-f", &crd.to_string_lossy()])?;
            cp.kubectl(&["apply", "-f", &rbac.to_string_lossy()])?;
            cp.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/workpools.workpool.dev",
                "--timeout=60s",
            ])
        })
        .await
        .expect("join")
        .expect("CRD and RBAC");
    }
    let mut bindings = String::new();
    for (identity, user) in REPLICAS {
        bindings.push_str(&format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: wpfault-{identity}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: workpool-operator}}\nsubjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {user}}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: wpfault-{identity}, namespace: {LEASE_NS}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: workpool-operator-leader-election}}\nsubjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {user}}}]\n"
        ));
    }
    apply_yaml(&cp, &work, "bindings.yaml", &bindings).await;
    let kubeconfigs: Vec<PathBuf> = REPLICAS
        .iter()
        .map(|(_, user)| cp.kubeconfig_for_user(user, &[]).expect("kubeconfig"))
        .collect();

    // KWOK and its nodes.
    let node_api: Api<Node> = Api::all(admin.clone());
    for name in NODES {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"}},
            "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                       "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"}},
        }))
        .expect("node");
        node_api
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
    }
    let kwok_log = std::fs::File::create(work.join("kwok.log")).expect("log");
    let mut kwok_proc = Proc(Some(
        Command::new(kwok.join("kwok"))
            .args([
                &format!("--kubeconfig={}", cp.admin_kubeconfig().display()),
                &format!("--config={}", kwok.join("stages.yaml").display()),
                &format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                "--node-lease-duration-seconds=40",
                &format!("--server-address=127.0.0.1:{}", free_port().expect("port")),
            ])
            .stdin(Stdio::null())
            .stdout(kwok_log.try_clone().expect("log"))
            .stderr(kwok_log)
            .process_group(0)
            .spawn()
            .expect("kwok starts"),
    ));

    let redis = RedisServer::start_with(Persistence::AppendOnlyAlways).expect("redis-server");
    let redis_url = redis.url();
    let state: Shared = Arc::default();
    watch_pods(admin.clone(), state.clone());
    watch_pools(admin.clone(), state.clone());
    watch_lease(admin.clone(), state.clone());

    let mut operators = Operators {
        bin: operator_bin,
        kubeconfigs,
        procs: vec![Proc(None), Proc(None)],
        dir: work.clone(),
        restarts: 0,
        started: 0,
    };
    operators.start(0);
    operators.start(1);
    let mut run = Run {
        cp: cp.clone(),
        admin: admin.clone(),
        state: state.clone(),
        operators,
        workers: Workers {
            bin: worker_bin,
            procs: HashMap::new(),
            dir: work.join("workers"),
            held: HashSet::new(),
        },
        redis,
        redis_url: redis_url.clone(),
        report: Vec::new(),
    };

    // The pools.
    let pools: Vec<String> = (0..TASK_POOLS + IDLE_POOLS).map(pool_name).collect();
    {
        let mut st = lock(&state);
        for p in &pools {
            let n = if is_task_pool(p) {
                TASK_REPLICAS
            } else {
                IDLE_REPLICAS
            } as usize;
            st.bound.insert(p.clone(), n);
            st.replicas.insert(p.clone(), n);
            if !is_task_pool(p) {
                st.autoscaled.insert(p.clone());
            }
        }
    }
    let t0 = Instant::now();
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &pool_resource());
    futures::stream::iter(pools.iter().cloned())
        .for_each_concurrent(8, |p| {
            let api = api.clone();
            let url = redis_url.clone();
            async move {
                let mut spec = json!({
                    "queue": {"redis": {"url": url}},
                    "delivery": {"visibilityTimeoutSeconds": 5, "maxDeliveries": 20},
                    "template": {"spec": {"containers": [{
                        "name": "worker", "image": "workpool-worker:scale-faults",
                        "args": ["run", "--builtin", "sleep", "--concurrency", "1"],
                    }]}},
                });
                if is_task_pool(&p) {
                    spec["replicas"] = json!(TASK_REPLICAS);
                } else {
                    // maxReplicas counts terminating pods (the issue's bound).
                    spec["autoscaling"] = json!({
                        "minReplicas": IDLE_REPLICAS, "maxReplicas": IDLE_REPLICAS,
                        "pollIntervalSeconds": POLL_S,
                    });
                }
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
                    "metadata": {"name": p, "namespace": NS},
                    "spec": spec,
                }))
                .expect("pool");
                api.create(&PostParams::default(), &obj)
                    .await
                    .expect("create pool");
            }
        })
        .await;
    run.converge("initial convergence", t0).await;

    // Tasks through the task pools for the whole run: one a second each, 0.8 s of work.
    let submitted: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop_tasks = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let submitted = submitted.clone();
        let stop = stop_tasks.clone();
        let url = redis_url.clone();
        tokio::spawn(async move {
            let mut conn = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if conn.is_none() {
                    conn = workpool_worker::queue::connect(&url, Some(Duration::from_secs(3)))
                        .await
                        .ok();
                }
                let mut broken = false;
                if let Some(c) = conn.as_mut() {
                    for i in 0..TASK_POOLS {
                        let pool = pool_name(i);
                        let q = Queue::new(&pool, &pool);
                        let task = NewTask::new(br#"{"ms": 800}"#);
                        if q.enqueue(c, &[task]).await.is_err() {
                            // Redis restarting: not submitted, so not expected.
                            broken = true;
                            break;
                        }
                        *submitted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(pool)
                            .or_default() += 1;
                    }
                }
                if broken {
                    conn = None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Let the task pools get busy.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(5) {
        run.tend().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 1. SIGKILL the leader.
    let leader = run.leader().expect("a leader");
    let killed_at = now_ms();
    let t = Instant::now();
    log(format!(
        "fault 1: SIGKILL of the leader {}",
        REPLICAS[leader].0
    ));
    run.operators.procs[leader].kill();
    run.disturb().await;
    run.operators.start(leader);
    run.converge("1 leader SIGKILLed", t).await;
    let takeover = wait_takeover(&run, killed_at).await;
    run.report.push(format!(
        "1 leader SIGKILLed: a replica acquired the Lease {:.1} s after the kill (lease {LEASE_S} s)",
        takeover as f64 / 1e3
    ));

    // 2. Restart kube-apiserver.
    let t = Instant::now();
    log("fault 2: kube-apiserver restart");
    run.disturb().await;
    {
        let cp2 = cp.clone();
        apiserver = tokio::task::spawn_blocking(move || {
            apiserver.stop();
            apiserver.start(&cp2);
            apiserver
        })
        .await
        .expect("join");
    }
    run.converge("2 kube-apiserver restarted", t).await;

    // 3. etcd frozen for longer than the Lease.
    let etcd = component_pid(&cp, "etcd").expect("etcd pid");
    let t = Instant::now();
    log(format!("fault 3: SIGSTOP etcd for {} s", LEASE_S + 4));
    run.disturb().await;
    signal(etcd, nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(LEASE_S + 4)).await;
    signal(etcd, nix::sys::signal::Signal::SIGCONT);
    run.converge("3 etcd stalled past the Lease", t).await;

    // 4. Restart Redis (append-only: what it acknowledged survives).
    let t = Instant::now();
    log("fault 4: Redis restart");
    run.disturb().await;
    run.redis.restart().expect("redis restarts");
    run.converge("4 Redis restarted", t).await;

    // 5. Every pod of one node deleted at once.
    let t = Instant::now();
    let pods_api: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let victims: Vec<(String, String)> = lock(&state)
        .pods
        .iter()
        .filter(|(_, p)| p.node.as_deref() == Some(NODES[0]) && p.deletion_ms.is_none())
        .map(|(n, p)| (n.clone(), p.pool.clone()))
        .collect();
    log(format!(
        "fault 5: deleting the {} pods of {}",
        victims.len(),
        NODES[0]
    ));
    lock(&state).test_deleted.extend(victims.iter().cloned());
    futures::stream::iter(victims.iter().map(|v| v.0.clone()))
        .for_each_concurrent(32, |n| {
            let api = pods_api.clone();
            async move {
                let _ = api.delete(&n, &DeleteParams::default()).await;
            }
        })
        .await;
    run.converge(&format!("5 {} pods of a node deleted", victims.len()), t)
        .await;

    // 6. Scale the task pools in while they hold tasks: idle pods go first, busy ones drain.
    let t = Instant::now();
    log("fault 6: task pools scaled in while busy");
    for i in 0..TASK_POOLS {
        run.patch_replicas(&pool_name(i), TASK_REPLICAS_AFTER).await;
    }
    run.converge("6 task pools scaled in", t).await;

    // Every task completes or is dead-lettered.
    stop_tasks.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = producer.await;
    let t = Instant::now();
    let mut dead: u64;
    loop {
        run.tend().await;
        let mut left = Vec::new();
        dead = 0;
        if let Ok(mut c) =
            workpool_worker::queue::connect(&redis_url, Some(Duration::from_secs(5))).await
        {
            for i in 0..TASK_POOLS {
                let pool = pool_name(i);
                let q = Queue::new(&pool, &pool).with_dead_letter_stream(format!("{pool}:dead"));
                match q.stats(&mut c).await {
                    Ok(s) => {
                        dead += s.dead_letters;
                        if s.backlog > 0 || s.pending > 0 || s.stream_length > 0 {
                            left.push(format!(
                                "{pool}: backlog {} pending {} length {}",
                                s.backlog, s.pending, s.stream_length
                            ));
                        }
                    }
                    Err(e) => left.push(format!("{pool}: {e}")),
                }
            }
        } else {
            left.push("Redis unreachable".into());
        }
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "tasks not all done or dead-lettered after 180 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total: u64 = submitted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .sum();
    run.report.push(format!(
        "tasks: {total} submitted, all completed or dead-lettered ({dead} dead letters)"
    ));

    // Pods created per pool <= replicas + the pods of it this test deleted.
    let mut extra_creations = Vec::new();
    {
        let st = lock(&state);
        for p in &pools {
            let first = if is_task_pool(p) {
                TASK_REPLICAS
            } else {
                IDLE_REPLICAS
            } as usize;
            let deleted = st.test_deleted.values().filter(|v| *v == p).count();
            let created = st.created.get(p).map_or(0, HashSet::len);
            if created > first + deleted {
                extra_creations.push(format!(
                    "{p}: {created} pods created, at most {first} + {deleted} replaced"
                ));
            }
        }
    }
    run.report
        .push(format!("extra creations: {}", extra_creations.len()));
    {
        let st = lock(&state);
        let worst = pools
            .iter()
            .map(|p| {
                let peak = st.peak.get(p).copied().unwrap_or(0) as i64;
                peak - st.bound.get(p).copied().unwrap_or(0) as i64
            })
            .max()
            .unwrap_or(0);
        run.report.push(format!(
            "most pods at once (terminating counted) minus the bound, worst pool: {worst}"
        ));
    }

    // No standby writes: every write of a replica was received while it held the Lease.
    let writes = audit_writes(&audit);
    let mut standby_writes = Vec::new();
    {
        let st = lock(&state);
        for w in &writes {
            let replica = REPLICAS.iter().find(|r| r.1 == w.user).map(|r| r.0);
            let holder = st.holder_at(w.received_ms);
            let holds = replica
                .zip(holder)
                .is_some_and(|(r, h)| h.starts_with(&format!("{r}-")));
            if !holds {
                standby_writes.push(format!(
                    "{} {} {} while the Lease was held by {holder:?}",
                    w.user, w.verb, w.what
                ));
            }
        }
    }
    run.report.push(format!(
        "{} writes by the operator replicas audited, {} by a replica not holding the Lease; operator restarts {}",
        writes.len(),
        standby_writes.len(),
        run.operators.restarts
    ));

    eprintln!("\n---- scale faults: {} pools ----", pools.len());
    for line in &run.report {
        eprintln!("{line}");
    }
    let violations = lock(&state).violations.clone();
    // The operators' account of the pools whose invariants broke (their logs go with the
    // control plane's directory).
    let broken: BTreeSet<&str> = violations
        .iter()
        .filter_map(|v| {
            pools
                .iter()
                .find(|p| v.contains(&format!(" of {p} ")) || v.contains(&format!("pool {p} ")))
        })
        .map(String::as_str)
        .collect();
    for pool in broken {
        eprintln!("{}", operator_log_lines(&run.operators.dir, pool, 80));
    }
    // Stop everything before asserting (nothing left running on a failure).
    run.operators.procs.clear();
    run.workers.procs.clear();
    kwok_proc.kill();
    drop(apiserver);
    assert!(
        writes.iter().any(|w| w.verb == "create"),
        "the audit log holds the operator's pod creations"
    );
    assert!(violations.is_empty(), "invariants broken: {violations:#?}");
    assert!(
        extra_creations.is_empty(),
        "more pods created than replicas + replacements: {extra_creations:#?}"
    );
    assert!(
        standby_writes.is_empty(),
        "writes by a replica not holding the Lease: {standby_writes:#?}"
    );
    let _ = &run.cp;
}

/// The operator replicas' logs (`op-*.log` in `dir`), in order.
fn operator_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("op-") && n.ends_with(".log"))
    });
    logs.sort();
    logs
}

/// The last `most` lines of each operator replica's log that mention `needle`.
fn operator_log_lines(dir: &Path, needle: &str, most: usize) -> String {
    let mut out = String::new();
    for log in operator_logs(dir) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        out.push_str(&format!("{} about {needle}:\n", log.display()));
        for l in &lines[lines.len().saturating_sub(most)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The last lines of every operator replica's log (`op-*.log` in `dir`).
fn operator_log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for p in operator_logs(dir) {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("---- {} (last 60 lines) ----\n", p.display()));
        for l in &lines[lines.len().saturating_sub(60)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Waits until a replica acquired the Lease after `since_ms`; milliseconds from
/// `since_ms`.
async fn wait_takeover(run: &Run, since_ms: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(LEASE_S) + SLACK;
    loop {
        if let Some(at) = lock(&run.state)
            .leases
            .iter()
            .filter(|(t, _)| *t >= since_ms)
            .map(|(t, _)| *t)
            .min()
        {
            return at - since_ms;
        }
        assert!(Instant::now() < deadline, "no replica took the Lease over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
