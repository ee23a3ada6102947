//! `workpool-scale-bench`: the operator at scale on simulated nodes.
//!
//! Starts the real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, built from source by `scripts/k8s-bin.sh`), KWOK (`scripts/kwok-bin.sh`)
//! with fake Nodes that it keeps alive and whose bound pods it moves to Running/Ready, one
//! real `redis-server`, and the real release `workpool-operator` with the RBAC it documents
//! (`operator/rbac.yaml`) under a user of its own. Then it creates `--pools` WorkPools of
//! `--pods` fixed replicas across `--namespaces` namespaces and measures:
//!
//! - time to converge: until every pool's status reports `--pods` ready pods and every pod
//!   is Running and Ready (with the milestones on the way: all pods created, scheduled);
//! - the operator's RSS (`VmRSS`, and its peak `VmHWM`, from `/proc/<pid>/status`);
//! - reconcile p50/p99 from the operator's `workpool_reconcile_duration_seconds`;
//! - API requests the operator makes, counted by the API server itself: FlowSchemas that
//!   match only the operator's user sort its requests into classes (leases, secrets,
//!   events, pod writes, pool writes, other), and the API server's
//!   `apiserver_flowcontrol_dispatched_requests_total` counts them. Reported for the whole
//!   convergence and per second over `--idle-seconds` once nothing changes (target: none,
//!   besides renewing the leader Lease).
//!
//! The peer, in the same run and on the same cluster, first (unless `--no-peer`): `--pools`
//! Deployments of `--pods` replicas with the same pod template, run by the
//! kube-controller-manager's deployment and replicaset controllers, measured the same way
//! (milestones, the controller manager's RSS and CPU, its controllers' API requests counted
//! by FlowSchemas of their service accounts, and the replicaset controller's syncs, the
//! peer's reconciles, from the controller manager's `workqueue_work_duration_seconds`);
//! its namespaces are deleted before the operator starts. For both, the API server's own
//! timing of the writes a reconcile waits on (pod creates, the pool's finalizer patch and
//! status apply) explains the reconcile durations: a missed target is printed with what
//! the run measured that explains it. The JSON keeps every field of earlier runs and adds the peer's beside
//! them (`peer_converged_s` next to `converged_s`, ...) and `targets`: each target of
//! issue #19 with its measured value, bound and whether it is met.
//!
//! Everything it starts is stopped on exit, on Ctrl-C and on SIGTERM (and by the control
//! plane's watchdog should this process be killed).
//!
//!   cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools 1000 --pods 10
//!   cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools 50   # quick
//!   cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools 10000 --pods 1 --namespaces 100

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt as _, watcher::Event};
use serde_json::json;
use workpool_tests::cluster::client_for;
use workpool_tests::controlplane::{ControlPlane, ControlPlaneOptions, free_port};
use workpool_worker::testing::RedisServer;

/// The operator's user: its client certificate names it, the FlowSchemas match it.
const OPERATOR_USER: &str = "workpool-scale-bench-operator";
/// Namespace of the operator's leader Lease (as in `operator/rbac.yaml`).
const OPERATOR_NS: &str = "workpool-system";
/// Annotation KWOK selects its fake nodes by.
const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Label the operator puts on every pod of a pool.
const POOL_LABEL: &str = "workpool.dev/pool";
/// Prefix of the FlowSchemas and the PriorityLevelConfiguration of the operator's user.
const FS_PREFIX: &str = "wpbench-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueueUrl {
    /// `urlSecretRef` to one Secret per namespace (as the examples do).
    Secret,
    /// The URL inline in `spec.queue.redis.url`.
    Inline,
}

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "workpool-scale-bench",
    about = "N WorkPools x M pods on KWOK nodes: convergence time, operator RSS, reconcile latency, API requests while idle"
)]
struct Args {
    /// WorkPools to create.
    #[arg(long, default_value_t = 1000)]
    pools: usize,
    /// Fixed `replicas` of each pool (no autoscaling).
    #[arg(long, default_value_t = 10)]
    pods: u32,
    /// Namespaces the pools are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Simulated nodes (default: enough for `--max-pods-per-node` at 75 % full).
    #[arg(long)]
    nodes: Option<usize>,
    /// Pods each simulated node takes (allocatable `pods`; KWOK gives pod IPs from the
    /// node's /24, so at most 254).
    #[arg(long, default_value_t = 200)]
    max_pods_per_node: usize,
    /// The operator's `--queue-poll-interval` (seconds between queue reads of a pool; also
    /// how often each pool is reconciled when nothing happens). Default: the operator's.
    #[arg(long, default_value_t = 5)]
    poll_interval: u64,
    /// Skip the peer: `--pools` Deployments of `--pods` replicas run by the
    /// kube-controller-manager on the same cluster before the WorkPools (deleted before
    /// the operator starts).
    #[arg(long)]
    no_peer: bool,
    /// The operator's RSS target (default: 64 MiB up to 1,000 pools, 200 MiB above).
    #[arg(long)]
    rss_target_mib: Option<u64>,
    /// How the pools name their Redis URL.
    #[arg(long, value_enum, default_value = "secret")]
    queue_url: QueueUrl,
    /// Seconds to wait after convergence before the idle window.
    #[arg(long, default_value_t = 15)]
    settle_seconds: u64,
    /// Length of the idle window in which the operator's API requests are counted.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Give up when not converged after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// WorkPool creations in flight at once.
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// The operator binary (default: `cargo build --release -p workpool-operator`, then
    /// target/release/workpool-operator).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Directory of `kwok` and `stages.yaml` (default: `scripts/kwok-bin.sh`, which builds
    /// them when missing).
    #[arg(long)]
    kwok_dir: Option<PathBuf>,
    /// Copy the operator's, KWOK's and the control plane's logs here at the end.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[scale-bench] {}", msg.as_ref());
}

/// What the benchmark started, stopped in reverse order by [`Env::teardown`].
#[derive(Default)]
struct Env {
    work: Option<tempfile::TempDir>,
    cp: Option<Arc<ControlPlane>>,
    redis: Option<RedisServer>,
    kwok: Option<Child>,
    operator: Option<Child>,
}

impl Env {
    fn work(&self) -> &Path {
        self.work
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("."))
    }

    /// Lists a pid for the control plane's watchdog, which kills it should this process
    /// die without tearing down (it reads `<control plane dir>/pids` then).
    fn watch_pid(&self, pid: u32) {
        if let Some(cp) = &self.cp
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .append(true)
                .open(cp.dir().join("pids"))
        {
            let _ = writeln!(f, "{pid}");
        }
    }

    fn copy_logs(&self, to: &Path) {
        let _ = std::fs::create_dir_all(to);
        let mut files = vec![];
        if let Ok(rd) = std::fs::read_dir(self.work()) {
            files.extend(rd.flatten().map(|e| e.path()));
        }
        if let Some(cp) = &self.cp
            && let Ok(rd) = std::fs::read_dir(cp.dir())
        {
            files.extend(rd.flatten().map(|e| e.path()));
        }
        for f in files {
            if f.extension().is_some_and(|e| e == "log" || e == "prom")
                && let Some(name) = f.file_name()
            {
                let _ = std::fs::copy(&f, to.join(name));
            }
        }
        log(format!("logs copied to {}", to.display()));
    }

    fn teardown(&mut self) {
        for (name, child) in [("operator", &mut self.operator), ("kwok", &mut self.kwok)] {
            if let Some(mut c) = child.take() {
                stop_child(name, &mut c);
            }
        }
        drop(self.redis.take());
        if let Some(cp) = self.cp.take() {
            cp.stop();
        }
        drop(self.work.take());
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
fn stop_child(name: &str, c: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log(format!(
        "{name} did not exit on SIGTERM within 10 s; killing it"
    ));
    let _ = c.kill();
    let _ = c.wait();
}

fn spawn_logged(cmd: &mut Command, log_path: &Path) -> Result<Child> {
    let out = std::fs::File::create(log_path)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C on the terminal reaches only this process,
        // which stops the others in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command, fails with its stderr.
fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn operator_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.operator {
        // Checked before the peer's ten minutes, not when the operator is started.
        if !p.is_file() {
            bail!("--operator {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    log("building the release operator (cargo build --release -p workpool-operator)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "workpool-operator",
            "--bin",
            "workpool-operator",
        ])
        .current_dir(repo_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p workpool-operator failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let p = target.join("release/workpool-operator");
    if !p.is_file() {
        bail!("{} is missing after the build", p.display());
    }
    Ok(p)
}

fn kwok_dir(args: &Args) -> Result<PathBuf> {
    if let Some(d) = &args.kwok_dir {
        return Ok(d.clone());
    }
    let out = run_cmd(&mut Command::new(repo_root().join("scripts/kwok-bin.sh")))?;
    let dir = out.lines().last().unwrap_or_default().trim().to_string();
    if dir.is_empty() {
        bail!("scripts/kwok-bin.sh printed no directory");
    }
    Ok(PathBuf::from(dir))
}

fn workpool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workpool.dev", "v1alpha1", "WorkPool"),
        "workpools",
    )
}

fn namespace_of(i: usize, n: usize) -> String {
    format!("wpbench-{:02}", i % n.max(1))
}

/// The operator's RBAC (operator/rbac.yaml bound to its user), and FlowSchemas that sort
/// its requests into classes the API server counts.
fn access_manifests() -> String {
    let binding = format!(
        r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: wpbench-operator}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: workpool-operator}}
subjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {OPERATOR_USER}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: wpbench-operator-leader-election, namespace: {OPERATOR_NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: workpool-operator-leader-election}}
subjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {OPERATOR_USER}}}]
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {{name: {FS_PREFIX}operator}}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 100
    limitResponse:
      type: Queue
      queuing: {{queues: 64, handSize: 6, queueLengthLimit: 100}}
"#
    );
    // (class, verbs, apiGroups, resources); the first match wins.
    let classes: &[(&str, &str, &str, &str)] = &[
        ("leases", "['*']", "['coordination.k8s.io']", "['leases']"),
        ("secrets", "['*']", "['']", "['secrets']"),
        ("events", "['*']", "['', 'events.k8s.io']", "['events']"),
        (
            "pod-writes",
            "[create, update, patch, delete, deletecollection]",
            "['']",
            "['pods', 'pods/status', 'pods/eviction']",
        ),
        (
            "pool-writes",
            "[create, update, patch, delete, deletecollection]",
            "['workpool.dev']",
            "['workpools', 'workpools/status', 'workpools/scale']",
        ),
        ("watches", "[watch]", "['*']", "['*']"),
        ("other", "['*']", "['*']", "['*']"),
    ];
    let mut out = binding;
    // The peer's controllers (the kube-controller-manager runs each with its own service
    // account): before the built-in kube-system-service-accounts FlowSchema (900), in the
    // operator's priority level, so both are served alike.
    for (i, (class, verbs, groups, resources)) in [
        (
            "pod-writes",
            "[create, update, patch, delete, deletecollection]",
            "['']",
            "['pods', 'pods/status']",
        ),
        (
            "pool-writes",
            "[create, update, patch, delete, deletecollection]",
            "['apps']",
            "['deployments', 'deployments/status', 'replicasets', 'replicasets/status']",
        ),
        ("events", "['*']", "['', 'events.k8s.io']", "['events']"),
        ("watches", "[watch]", "['*']", "['*']"),
        ("other", "['*']", "['*']", "['*']"),
    ]
    .iter()
    .enumerate()
    {
        out.push_str(&format!(
            r#"---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {FS_PREFIX}{PEER_CLASS}{class}}}
spec:
  priorityLevelConfiguration: {{name: {FS_PREFIX}operator}}
  matchingPrecedence: {prec}
  distinguisherMethod: {{type: ByUser}}
  rules:
    - subjects:
        - {{kind: ServiceAccount, serviceAccount: {{name: deployment-controller, namespace: kube-system}}}}
        - {{kind: ServiceAccount, serviceAccount: {{name: replicaset-controller, namespace: kube-system}}}}
      resourceRules: [{{verbs: {verbs}, apiGroups: {groups}, resources: {resources}, clusterScope: true, namespaces: ['*']}}]
"#,
            prec = 500 + i
        ));
    }
    for (i, (class, verbs, groups, resources)) in classes.iter().enumerate() {
        let non_resource = if *class == "other" {
            "\n      nonResourceRules: [{verbs: ['*'], nonResourceURLs: ['*']}]"
        } else {
            ""
        };
        out.push_str(&format!(
            r#"---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {FS_PREFIX}{class}}}
spec:
  priorityLevelConfiguration: {{name: {FS_PREFIX}operator}}
  matchingPrecedence: {prec}
  distinguisherMethod: {{type: ByUser}}
  rules:
    - subjects: [{{kind: User, user: {{name: {OPERATOR_USER}}}}}]
      resourceRules: [{{verbs: {verbs}, apiGroups: {groups}, resources: {resources}, clusterScope: true, namespaces: ['*']}}]{non_resource}
"#,
            prec = 1000 + i
        ));
    }
    out
}

/// Prefix of the peer's classes (after [`FS_PREFIX`]).
const PEER_CLASS: &str = "peer-";

/// `apiserver_flowcontrol_dispatched_requests_total` of the operator's classes, and of
/// the peer's (the deployment and replicaset controllers).
fn parse_apf_all(metrics: &str) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let mut ours = BTreeMap::new();
    let mut peer = BTreeMap::new();
    for (class, v) in parse_apf(metrics) {
        match class.strip_prefix(PEER_CLASS) {
            Some(c) => peer.insert(c.to_string(), v),
            None => ours.insert(class, v),
        };
    }
    (ours, peer)
}

/// `apiserver_flowcontrol_dispatched_requests_total` of every class of ours.
fn parse_apf(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
        else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(fs) = label(labels, "flow_schema") else {
            continue;
        };
        if let Some(class) = fs.strip_prefix(FS_PREFIX) {
            *out.entry(class.to_string()).or_insert(0.0) += value.trim().parse().unwrap_or(0.0);
        }
    }
    out
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = labels.find(&key)? + key.len();
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

fn apf_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// A Prometheus histogram: cumulative bucket counts by upper bound, sum, count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn parse(metrics: &str, name: &str) -> Histogram {
        Histogram::parse_where(metrics, name, |_| true)
    }

    /// The sum of every series of histogram `name` whose labels (`a="x",b="y"`, without
    /// `le`) pass `keep`: bucket by bucket, sums and counts added.
    fn parse_where(metrics: &str, name: &str, keep: impl Fn(&str) -> bool) -> Histogram {
        let mut h = Histogram::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (part, rest) = if let Some(r) = rest.strip_prefix("_bucket") {
                ("bucket", r)
            } else if let Some(r) = rest.strip_prefix("_sum") {
                ("sum", r)
            } else if let Some(r) = rest.strip_prefix("_count") {
                ("count", r)
            } else {
                continue;
            };
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => match r.rsplit_once("} ") {
                    Some(lv) => lv,
                    None => continue,
                },
                None => match rest.strip_prefix(' ') {
                    Some(v) => ("", v),
                    None => continue,
                },
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            if !keep(labels) {
                continue;
            }
            match part {
                "bucket" => {
                    let le = match label(labels, "le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    // Keyed by the bound's bits: the same bound in every series.
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
                }
                "sum" => h.sum += value,
                _ => h.count += value,
            }
        }
        h.buckets = buckets.into_values().collect();
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    fn minus(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map(|(_, c)| *c)
                        .unwrap_or(0.0);
                    (*le, c - before)
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// `histogram_quantile`: linear interpolation inside the bucket that holds the
    /// quantile (Prometheus' estimate), and that bucket's upper bound.
    fn quantile(&self, q: f64) -> Option<(f64, f64)> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some((prev.0, le));
                }
                let inside = c - prev.1;
                let frac = if inside > 0.0 {
                    (rank - prev.1) / inside
                } else {
                    1.0
                };
                return Some((prev.0 + (le - prev.0) * frac, le));
            }
            prev = (le, c);
        }
        None
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

fn fmt_q(h: &Histogram, q: f64) -> String {
    match h.quantile(q) {
        Some((v, le)) if le.is_infinite() => format!("> {:.0} ms", v * 1e3),
        Some((v, le)) => format!("{:.1} ms (bucket ≤ {} ms)", v * 1e3, le * 1e3),
        None => "-".into(),
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// What the benchmark's own watches see (admin user: not counted as the operator's).
#[derive(Default)]
struct Observed {
    /// ns/name -> (scheduled, running and ready)
    pods: HashMap<String, (bool, bool)>,
    /// ns/name -> status reports `pods` ready of `pods` for the current generation
    pools: HashMap<String, bool>,
    pod_events: u64,
    pool_events: u64,
}

fn pod_state(p: &Pod) -> Option<(String, (bool, bool))> {
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let key = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let status = p.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some((key, (scheduled, running && ready)))
}

fn pool_ready(p: &DynamicObject, pods: u32) -> (String, bool) {
    let key = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    let st = &p.data["status"];
    let ready = st["readyReplicas"].as_i64() == Some(pods as i64)
        && st["replicas"].as_i64() == Some(pods as i64)
        && st["observedGeneration"].as_i64() == p.metadata.generation;
    (key, ready)
}

fn watch_pods(client: kube::Client, selector: &str, obs: Arc<Mutex<Observed>>) {
    let api: Api<Pod> = Api::all(client);
    let stream = watcher(api, watcher::Config::default().labels(selector)).default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { continue };
            let mut o = obs.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                Event::Apply(p) | Event::InitApply(p) => {
                    o.pod_events += 1;
                    match pod_state(&p) {
                        Some((k, v)) => {
                            o.pods.insert(k, v);
                        }
                        None => {
                            let k = format!(
                                "{}/{}",
                                p.metadata.namespace.as_deref().unwrap_or_default(),
                                p.metadata.name.as_deref().unwrap_or_default()
                            );
                            o.pods.remove(&k);
                        }
                    }
                }
                Event::Delete(p) => {
                    o.pod_events += 1;
                    let k = format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default()
                    );
                    o.pods.remove(&k);
                }
                Event::Init | Event::InitDone => {}
            }
        }
    });
}

fn watch_pools(client: kube::Client, ar: &ApiResource, pods: u32, obs: Arc<Mutex<Observed>>) {
    let api: Api<DynamicObject> = Api::all_with(client, ar);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { continue };
            let mut o = obs.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                Event::Apply(p) | Event::InitApply(p) => {
                    o.pool_events += 1;
                    let (k, r) = pool_ready(&p, pods);
                    o.pools.insert(k, r);
                }
                Event::Delete(p) => {
                    o.pool_events += 1;
                    let (k, _) = pool_ready(&p, pods);
                    o.pools.remove(&k);
                }
                Event::Init | Event::InitDone => {}
            }
        }
    });
}

/// Everything measured, printed as a table and optionally written as JSON.
#[derive(Debug, Default, serde::Serialize)]
struct Results {
    pools: usize,
    pods_per_pool: u32,
    namespaces: usize,
    nodes: usize,
    poll_interval_s: u64,
    queue_url: String,
    control_plane_start_s: f64,
    pools_created_s: Option<f64>,
    all_pods_created_s: Option<f64>,
    all_pods_scheduled_s: Option<f64>,
    all_pods_running_s: Option<f64>,
    all_pools_ready_s: Option<f64>,
    converged_s: Option<f64>,
    operator_rss_peak_kib: u64,
    operator_rss_converged_kib: u64,
    operator_rss_idle_end_kib: u64,
    operator_rss_before_pools_kib: u64,
    reconciles_converge: f64,
    reconcile_converge_p50_s: Option<f64>,
    reconcile_converge_p99_s: Option<f64>,
    reconcile_converge_mean_s: Option<f64>,
    reconciles_idle: f64,
    reconcile_idle_p50_s: Option<f64>,
    reconcile_idle_p99_s: Option<f64>,
    reconcile_idle_mean_s: Option<f64>,
    requests_converge: BTreeMap<String, f64>,
    requests_idle: BTreeMap<String, f64>,
    idle_seconds: f64,
    idle_pod_events: u64,
    idle_pool_events: u64,
    operator_reconcile_errors: f64,
    operator_cpu_converge_s: f64,
    operator_cpu_idle_s: f64,
    /// The peer, measured in the same run on the same cluster: `pools` Deployments of
    /// `pods_per_pool` replicas, run by the kube-controller-manager (its RSS and CPU are
    /// the whole process': every controller it runs).
    peer: bool,
    peer_pools_created_s: Option<f64>,
    peer_all_pods_created_s: Option<f64>,
    peer_all_pods_scheduled_s: Option<f64>,
    peer_all_pods_running_s: Option<f64>,
    peer_all_pools_ready_s: Option<f64>,
    peer_converged_s: Option<f64>,
    /// The peer had not converged when `--timeout-seconds` ran out (its figures are
    /// those of that moment, and `converged_vs_peer` is an upper bound).
    peer_not_converged_after_s: Option<f64>,
    peer_rss_peak_kib: u64,
    peer_rss_converged_kib: u64,
    peer_cpu_converge_s: f64,
    peer_cpu_idle_s: f64,
    peer_requests_converge: BTreeMap<String, f64>,
    peer_requests_idle: BTreeMap<String, f64>,
    /// Deleting the peer's namespaces until their last pod is gone.
    peer_cleanup_s: Option<f64>,
    /// The peer's counterpart of a reconcile: one sync of the replicaset controller
    /// (`workqueue_work_duration_seconds{name="replicaset"}` of the kube-controller-manager;
    /// its buckets are powers of ten, so a quantile is only known to within one).
    peer_reconciles_converge: f64,
    peer_reconcile_converge_p50_s: Option<f64>,
    peer_reconcile_converge_p99_s: Option<f64>,
    peer_reconcile_converge_mean_s: Option<f64>,
    /// The same for the deployment controller's syncs.
    peer_deployment_syncs_converge: f64,
    peer_deployment_sync_converge_p99_s: Option<f64>,
    peer_deployment_sync_converge_mean_s: Option<f64>,
    /// Server-side latency of the writes a reconcile waits on, while converging (the API
    /// server's `apiserver_request_duration_seconds`): mean and p99 in ms, by request.
    server_writes_converge: BTreeMap<String, ServerLatency>,
    /// The same while the peer converged (its pod creates).
    peer_server_writes_converge: BTreeMap<String, ServerLatency>,
    /// Each target of issue #19: the figure, the bound, whether it is met.
    targets: BTreeMap<String, Target>,
}

/// A target, its measured value and whether it was met.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Target {
    value: Option<f64>,
    bound: f64,
    met: bool,
    unit: &'static str,
    /// For a missed target: what the run measured that explains it.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

/// Requests of one kind, timed by the API server.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct ServerLatency {
    count: f64,
    mean_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// The writes a pool's reconcile (or a ReplicaSet's sync) waits on: (name, verb, resource,
/// subresource).
const TIMED_WRITES: [(&str, &str, &str, &str); 4] = [
    ("pod create", "POST", "pods", ""),
    ("pool patch (finalizer)", "PATCH", "workpools", ""),
    ("pool status apply", "APPLY", "workpools", "status"),
    ("replicaset status update", "PUT", "replicasets", "status"),
];

/// [`TIMED_WRITES`] between two scrapes of the API server's metrics.
fn server_writes(before: &str, after: &str) -> BTreeMap<String, ServerLatency> {
    const H: &str = "apiserver_request_duration_seconds";
    let mut out = BTreeMap::new();
    for (name, verb, resource, sub) in TIMED_WRITES {
        let keep = |l: &str| {
            label(l, "verb") == Some(verb)
                && label(l, "resource") == Some(resource)
                && label(l, "subresource").unwrap_or("") == sub
        };
        let h =
            Histogram::parse_where(after, H, keep).minus(&Histogram::parse_where(before, H, keep));
        if h.count > 0.0 {
            out.insert(
                name.to_string(),
                ServerLatency {
                    count: h.count,
                    mean_ms: h.mean().map(|m| m * 1e3),
                    p99_ms: h.quantile(0.99).map(|q| q.0 * 1e3),
                },
            );
        }
    }
    out
}

impl Target {
    fn at_most(value: Option<f64>, bound: f64, unit: &'static str) -> Target {
        Target {
            value,
            bound,
            met: value.is_some_and(|v| v <= bound),
            unit,
            why: None,
        }
    }

    /// With the explanation, kept only when the target is missed.
    fn explained(mut self, why: impl FnOnce() -> String) -> Target {
        if !self.met {
            self.why = Some(why());
        }
        self
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "-".into())
}

/// Why reconciles took what they took: the writes a pool's first reconcile waits on, one
/// after the other, as the API server timed them, and the peer's syncs beside them.
fn why_reconcile_p99(r: &Results) -> String {
    let w = |name: &str| {
        r.server_writes_converge
            .get(name)
            .copied()
            .unwrap_or_default()
    };
    let (create, patch, status) = (
        w("pod create"),
        w("pool patch (finalizer)"),
        w("pool status apply"),
    );
    // Slow start: batches of 1, 2, 4, ... pods (at most the operator's
    // CREATE_BATCH_MAX), each batch after the last one.
    let (mut left, mut batch, mut batches) = (r.pods_per_pool.max(1), 1u32, 0.0);
    while left > 0 {
        left = left.saturating_sub(batch);
        // The operator's `act::CREATE_BATCH_MAX` (this crate does not link the operator).
        batch = (batch * 2).min(16);
        batches += 1.0;
    }
    let serial = patch.mean_ms.unwrap_or(0.0)
        + batches * create.mean_ms.unwrap_or(0.0)
        + status.mean_ms.unwrap_or(0.0);
    let mut why = format!(
        "a new pool's reconcile waits on its writes one after another: the finalizer patch \
         (server-side mean {} / p99 {}), {batches:.0} slow-start batches of pod creates ({} / {} \
         each) and the status apply ({} / {}): about {serial:.0} ms of server time alone",
        ms(patch.mean_ms),
        ms(patch.p99_ms),
        ms(create.mean_ms),
        ms(create.p99_ms),
        ms(status.mean_ms),
        ms(status.p99_ms),
    );
    if r.peer {
        why.push_str(&format!(
            "; the replicaset controller, whose creates are on its sync path too, took p99 {} \
             / mean {} per sync in the same run",
            ms(r.peer_reconcile_converge_p99_s.map(|s| s * 1e3)),
            ms(r.peer_reconcile_converge_mean_s.map(|s| s * 1e3)),
        ));
    }
    why.push_str(
        ". Would move it: pod creates off the reconcile path (expected, sent by a bounded \
         creator, confirmed by the pod watch)",
    );
    why
}

/// The targets of issue #19 from the measured figures.
fn targets(args: &Args, r: &Results) -> BTreeMap<String, Target> {
    let mut t = BTreeMap::new();
    // A peer that did not converge gives an upper bound: it took longer than that.
    if let (Some(ours), Some(peer)) = (
        r.converged_s,
        r.peer_converged_s.or(r.peer_not_converged_after_s),
    ) {
        t.insert(
            "converged_vs_peer".into(),
            Target::at_most(Some(ours / peer.max(0.001)), 1.1, "x"),
        );
    }
    let rss_bound = args
        .rss_target_mib
        .unwrap_or(if r.pools <= 1000 { 64 } else { 200 });
    t.insert(
        "operator_rss_peak".into(),
        Target::at_most(
            Some(r.operator_rss_peak_kib as f64 / 1024.0),
            rss_bound as f64,
            "MiB",
        )
        .explained(|| {
            format!(
                "RSS {} before the pools, {} converged, {} at the end of the rest: {:.1} KiB \
                 per pool at rest",
                mib(r.operator_rss_before_pools_kib),
                mib(r.operator_rss_converged_kib),
                mib(r.operator_rss_idle_end_kib),
                r.operator_rss_idle_end_kib
                    .saturating_sub(r.operator_rss_before_pools_kib) as f64
                    / r.pools.max(1) as f64,
            )
        }),
    );
    t.insert(
        "reconcile_converge_p99".into(),
        Target::at_most(r.reconcile_converge_p99_s.map(|s| s * 1e3), 100.0, "ms")
            .explained(|| why_reconcile_p99(r)),
    );
    t.insert(
        "operator_cpu_idle".into(),
        Target::at_most(
            Some(100.0 * r.operator_cpu_idle_s / r.idle_seconds.max(1.0)),
            3.0,
            "% of a core",
        ),
    );
    // At rest: the Lease and the documented Secret re-reads only.
    let other: f64 = r
        .requests_idle
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "leases" | "secrets" | "watches"))
        .map(|(_, v)| v)
        .sum();
    t.insert(
        "idle_requests_besides_lease_and_secrets".into(),
        Target::at_most(Some(other), 0.0, "requests"),
    );
    t
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = s.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    // In clock ticks of USER_HZ, which Linux fixes at 100 for what it reports to user space.
    (ticks(11) + ticks(12)) / 100.0
}

fn sum_counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

/// Keeps a metrics snapshot in the work directory (copied with `--logs`).
fn keep(env: &Env, name: &str, text: &str) {
    let _ = std::fs::write(env.work().join(format!("{name}.prom")), text);
}

async fn scrape_operator(http: &reqwest::Client, addr: &str) -> Result<String> {
    Ok(http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

async fn scrape_apiserver(cp: &Arc<ControlPlane>) -> Result<String> {
    let cp = cp.clone();
    tokio::task::spawn_blocking(move || cp.kubectl(&["get", "--raw", "/metrics"])).await?
}

/// The kube-controller-manager's `/metrics`, from its secure port (read off its command
/// line) as the admin user: it authenticates and authorizes the request through the API
/// server. Its serving certificate is self-signed at start, so it is not verified.
async fn scrape_controller_manager(cp: &ControlPlane, pid: u32) -> Result<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let port: u16 = String::from_utf8_lossy(&cmd)
        .split('\0')
        .find_map(|a| a.strip_prefix("--secure-port=")?.parse().ok())
        .context("no --secure-port on the kube-controller-manager's command line")?;
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.admin_kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.cluster_url = format!("https://127.0.0.1:{port}").parse()?;
    config.root_cert = None;
    config.accept_invalid_certs = true;
    let client = kube::Client::try_from(config)?;
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    client
        .request_text(req)
        .await
        .context("scraping the kube-controller-manager")
}

async fn kubectl(cp: &Arc<ControlPlane>, args: &[&str]) -> Result<String> {
    let cp = cp.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cp.kubectl(&a)
    })
    .await?
}

/// The pid of the control plane's kube-controller-manager (the process whose command
/// line names this control plane's directory).
fn controller_manager_pid(cp: &ControlPlane) -> Option<u32> {
    let dir = cp.dir().to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        let exe = cmd.split('\0').next()?;
        (exe.ends_with("kube-controller-manager") && cmd.contains(&dir)).then_some(pid)
    })
}

/// Label of the peer's pods.
const PEER_LABEL: &str = "wpbench.dev/peer";

fn deployment_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deployments",
    )
}

/// Creates `objects` (each names its namespace) in the background, `concurrency` at once
/// (the WorkPools and the peer's Deployments alike).
fn spawn_creates(
    admin: kube::Client,
    resource: ApiResource,
    objects: Vec<serde_json::Value>,
    concurrency: usize,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let results: Vec<Result<()>> = futures::stream::iter(objects)
            .map(|v| {
                let (admin, resource) = (admin.clone(), resource.clone());
                async move {
                    let obj: DynamicObject = serde_json::from_value(v)?;
                    let ns = obj.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<DynamicObject> = Api::namespaced_with(admin, &ns, &resource);
                    api.create(&PostParams::default(), &obj).await?;
                    Ok(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    })
}

/// The peer: `--pools` Deployments of `--pods` replicas (the same pod template, the same
/// namespaces' spread, the same creation concurrency) run by the kube-controller-manager,
/// measured like the WorkPools: convergence milestones, the controller manager's RSS
/// and CPU, the deployment and replicaset controllers' API requests while converging and
/// at rest. Its namespaces are deleted afterwards, and the WorkPools start once the last
/// of its pods is gone.
async fn run_peer(
    args: &Args,
    cp: &Arc<ControlPlane>,
    admin: &kube::Client,
    res: &mut Results,
) -> Result<()> {
    let total_pods = args.pools * args.pods as usize;
    let kcm = controller_manager_pid(cp).context("the kube-controller-manager's pid")?;
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    let peer_ns = |i: usize| format!("wpbench-peer-{:02}", i % args.namespaces.max(1));
    let namespaces: Vec<String> = (0..args.namespaces.max(1)).map(peer_ns).collect();
    for ns in &namespaces {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        ns_api.create(&PostParams::default(), &obj).await?;
    }
    // The ServiceAccount controller creates `default` in each: pods wait for it.
    for ns in &namespaces {
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sa.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("no default ServiceAccount in {ns} after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let obs = Arc::new(Mutex::new(Observed::default()));
    watch_pods(admin.clone(), PEER_LABEL, obs.clone());
    watch_pools(
        admin.clone(),
        &deployment_resource(),
        args.pods,
        obs.clone(),
    );
    let api_m0 = scrape_apiserver(cp).await?;
    let apf0 = parse_apf_all(&api_m0).1;
    let cpu0 = cpu_seconds(kcm);
    let kcm_m0 = scrape_controller_manager(cp, kcm).await?;
    log(format!(
        "peer: creating {} Deployments x {} replicas in {} namespaces",
        args.pools, args.pods, args.namespaces
    ));
    res.peer = true;
    let t0 = Instant::now();
    let creator = {
        let pods = args.pods;
        let objects = (0..args.pools)
            .map(|i| {
                let (ns, name) = (peer_ns(i), format!("peer-{i:04}"));
                json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "replicas": pods,
                        "selector": {"matchLabels": {PEER_LABEL: name}},
                        "template": {
                            "metadata": {"labels": {PEER_LABEL: name}},
                            "spec": {"containers": [{
                                "name": "worker",
                                "image": "workpool-worker:scale-bench",
                                "args": ["run", "--builtin", "sleep"],
                            }]},
                        },
                    },
                })
            })
            .collect();
        spawn_creates(
            admin.clone(),
            deployment_resource(),
            objects,
            args.create_concurrency,
        )
    };
    let mut creator = Some(creator);
    let mut peak = 0u64;
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let el = t0.elapsed().as_secs_f64();
        if let Some(c) = &creator
            && c.is_finished()
        {
            creator.take().expect("checked").await??;
            res.peer_pools_created_s = Some(el);
        }
        if let Some((rss, hwm)) = rss_kib(kcm) {
            peak = peak.max(hwm).max(rss);
        }
        let (created, scheduled, running, ready) = {
            let o = obs.lock().unwrap_or_else(|p| p.into_inner());
            (
                o.pods.len(),
                o.pods.values().filter(|v| v.0).count(),
                o.pods.values().filter(|v| v.1).count(),
                o.pools.values().filter(|r| **r).count(),
            )
        };
        let mark = |slot: &mut Option<f64>, done: bool| {
            if slot.is_none() && done {
                *slot = Some(el);
            }
        };
        mark(&mut res.peer_all_pods_created_s, created >= total_pods);
        mark(&mut res.peer_all_pods_scheduled_s, scheduled >= total_pods);
        mark(&mut res.peer_all_pods_running_s, running >= total_pods);
        mark(&mut res.peer_all_pools_ready_s, ready >= args.pools);
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            log(format!(
                "peer t={el:.0}s pods created {created}/{total_pods} scheduled {scheduled} running+ready {running}; deployments ready {ready}/{}",
                args.pools
            ));
        }
        if creator.is_none()
            && running == total_pods
            && created == total_pods
            && ready == args.pools
        {
            res.peer_converged_s = Some(el);
            break;
        }
        // Not an error: a peer slower than the limit is a result (the operator is still
        // measured, and compared with the limit).
        if t0.elapsed() > Duration::from_secs(args.timeout_seconds) {
            log(format!(
                "peer not converged after {}s: pods created {created}/{total_pods}, scheduled {scheduled}, running+ready {running}, deployments ready {ready}/{}; its figures are those of this moment",
                args.timeout_seconds, args.pools
            ));
            res.peer_not_converged_after_s = Some(el);
            break;
        }
    }
    let api_m1 = scrape_apiserver(cp).await?;
    let apf1 = parse_apf_all(&api_m1).1;
    let cpu1 = cpu_seconds(kcm);
    let kcm_m1 = scrape_controller_manager(cp, kcm).await?;
    res.peer_server_writes_converge = server_writes(&api_m0, &api_m1);
    const WQ: &str = "workqueue_work_duration_seconds";
    let syncs = |queue: &str| {
        let keep = |l: &str| label(l, "name") == Some(queue);
        Histogram::parse_where(&kcm_m1, WQ, keep).minus(&Histogram::parse_where(&kcm_m0, WQ, keep))
    };
    let rs = syncs("replicaset");
    res.peer_reconciles_converge = rs.count;
    res.peer_reconcile_converge_p50_s = rs.quantile(0.5).map(|q| q.0);
    res.peer_reconcile_converge_p99_s = rs.quantile(0.99).map(|q| q.0);
    res.peer_reconcile_converge_mean_s = rs.mean();
    let deploy = syncs("deployment");
    res.peer_deployment_syncs_converge = deploy.count;
    res.peer_deployment_sync_converge_p99_s = deploy.quantile(0.99).map(|q| q.0);
    res.peer_deployment_sync_converge_mean_s = deploy.mean();
    res.peer_rss_converged_kib = rss_kib(kcm).map(|r| r.0).unwrap_or(0);
    // At rest only when it converged; otherwise the idle figures stay empty.
    let (mut apf2, mut apf3) = (apf1.clone(), apf1.clone());
    let (mut cpu2, mut cpu3) = (cpu1, cpu1);
    if let Some(converged) = res.peer_converged_s {
        log(format!(
            "peer converged in {converged:.1}s; settling {}s, then {}s at rest",
            args.settle_seconds, args.idle_seconds
        ));
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        apf2 = parse_apf_all(&scrape_apiserver(cp).await?).1;
        cpu2 = cpu_seconds(kcm);
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        apf3 = parse_apf_all(&scrape_apiserver(cp).await?).1;
        cpu3 = cpu_seconds(kcm);
    }
    if let Some((rss, hwm)) = rss_kib(kcm) {
        peak = peak.max(hwm).max(rss);
    }
    res.peer_rss_peak_kib = peak;
    res.peer_cpu_converge_s = cpu1 - cpu0;
    res.peer_cpu_idle_s = cpu3 - cpu2;
    res.peer_requests_converge = apf_delta(&apf0, &apf1);
    res.peer_requests_idle = apf_delta(&apf2, &apf3);

    // Out of the way of the WorkPools: the namespaces go, and with them every pod.
    let cleanup = Instant::now();
    for ns in &namespaces {
        ns_api.delete(ns, &Default::default()).await?;
    }
    loop {
        let left = obs.lock().unwrap_or_else(|p| p.into_inner()).pods.len();
        let ns_left = ns_api
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("wpbench-peer-"))
            })
            .count();
        if left == 0 && ns_left == 0 {
            break;
        }
        if cleanup.elapsed() > Duration::from_secs(args.timeout_seconds) {
            bail!(
                "the peer's {left} pods and {ns_left} namespaces still there after {}s",
                args.timeout_seconds
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    res.peer_cleanup_s = Some(cleanup.elapsed().as_secs_f64());
    log(format!(
        "peer removed in {:.1}s",
        cleanup.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn run(args: &Args, env: &mut Env, res: &mut Results) -> Result<()> {
    let total_pods = args.pools * args.pods as usize;
    let nodes = args.nodes.unwrap_or_else(|| {
        (total_pods * 4)
            .div_ceil(args.max_pods_per_node.max(1) * 3)
            .max(1)
    });
    res.pools = args.pools;
    res.pods_per_pool = args.pods;
    res.namespaces = args.namespaces;
    res.nodes = nodes;
    res.poll_interval_s = args.poll_interval;
    res.queue_url = format!("{:?}", args.queue_url).to_lowercase();

    let (operator_bin, kwok) = tokio::task::spawn_blocking({
        let args = args.clone();
        move || -> Result<(PathBuf, PathBuf)> { Ok((operator_binary(&args)?, kwok_dir(&args)?)) }
    })
    .await??;
    env.work = Some(
        tempfile::Builder::new()
            .prefix("workpool-scale-bench-")
            .tempdir()?,
    );

    log(
        "starting the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)",
    );
    let started = Instant::now();
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default()))
        .await??;
    let cp = Arc::new(cp);
    env.cp = Some(cp.clone());
    res.control_plane_start_s = started.elapsed().as_secs_f64();
    log(format!(
        "control plane ready in {:.1}s at {}",
        res.control_plane_start_s,
        cp.server_url()
    ));
    let admin = client_for(cp.admin_kubeconfig()).await?;

    let crd = repo_root().join("crds/workpool.yaml");
    kubectl(&cp, &["apply", "-f", &crd.to_string_lossy()]).await?;
    kubectl(
        &cp,
        &[
            "wait",
            "--for=condition=Established",
            "crd/workpools.workpool.dev",
            "--timeout=60s",
        ],
    )
    .await?;

    let redis = tokio::task::spawn_blocking(RedisServer::start).await??;
    let redis_url = redis.url();
    if let Some(pid) = redis.pid() {
        env.watch_pid(pid);
    }
    env.redis = Some(redis);

    // Namespaces, the Redis Secret in each, the operator's RBAC and FlowSchemas.
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    let mut namespaces = vec![OPERATOR_NS.to_string()];
    namespaces.extend((0..args.namespaces.max(1)).map(|i| namespace_of(i, args.namespaces)));
    for ns in &namespaces {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        ns_api.create(&PostParams::default(), &obj).await?;
        if ns != OPERATOR_NS {
            let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": "workpool-redis"},
                "stringData": {"url": redis_url},
            }))?;
            secrets.create(&PostParams::default(), &s).await?;
        }
    }
    let rbac = repo_root().join("operator/rbac.yaml");
    kubectl(&cp, &["apply", "-f", &rbac.to_string_lossy()]).await?;
    let access = env.work().join("access.yaml");
    std::fs::write(&access, access_manifests())?;
    kubectl(&cp, &["apply", "-f", &access.to_string_lossy()]).await?;
    let operator_kubeconfig = cp.kubeconfig_for_user(OPERATOR_USER, &[])?;

    // Simulated nodes.
    log(format!(
        "creating {nodes} KWOK nodes ({} pods each at most)",
        args.max_pods_per_node
    ));
    let node_api: Api<Node> = Api::all(admin.clone());
    for i in 0..nodes {
        let name = format!("kwok-node-{i:03}");
        let max = args.max_pods_per_node.to_string();
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "kwok",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": max},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": max},
            },
        }))?;
        node_api.create(&PostParams::default(), &node).await?;
    }
    let kwok_port = free_port()?;
    let mut kwok_cmd = Command::new(kwok.join("kwok"));
    kwok_cmd.args([
        &format!("--kubeconfig={}", cp.admin_kubeconfig().display()),
        &format!("--config={}", kwok.join("stages.yaml").display()),
        &format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
        "--node-lease-duration-seconds=40",
        &format!("--server-address=127.0.0.1:{kwok_port}"),
    ]);
    let kwok_child = spawn_logged(&mut kwok_cmd, &env.work().join("kwok.log"))?;
    env.watch_pid(kwok_child.id());
    env.kwok = Some(kwok_child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = node_api.list(&Default::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == nodes {
            break;
        }
        if let Some(Ok(Some(st))) = env.kwok.as_mut().map(|c| c.try_wait()) {
            bail!(
                "kwok exited ({st}):\n{}",
                tail(&env.work().join("kwok.log"), 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{ready} of {nodes} KWOK nodes Ready after 120 s:\n{}",
                tail(&env.work().join("kwok.log"), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log(format!("{nodes} KWOK nodes Ready"));

    if !args.no_peer {
        run_peer(args, &cp, &admin, res).await?;
    }

    // The benchmark's own view, through the admin user.
    let obs = Arc::new(Mutex::new(Observed::default()));
    watch_pods(admin.clone(), POOL_LABEL, obs.clone());
    watch_pools(admin.clone(), &workpool_resource(), args.pods, obs.clone());

    // The operator.
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let mut op_cmd = Command::new(&operator_bin);
    op_cmd
        .env("KUBECONFIG", &operator_kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("WORKPOOL_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .args([
            &format!("--metrics-addr={metrics_addr}"),
            &format!("--lease-namespace={OPERATOR_NS}"),
            &format!("--queue-poll-interval={}", args.poll_interval),
        ]);
    let op_log = env.work().join("operator.log");
    let op_child = spawn_logged(&mut op_cmd, &op_log)?;
    let op_pid = op_child.id();
    env.watch_pid(op_pid);
    env.operator = Some(op_child);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("http://{metrics_addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        if let Some(Ok(Some(st))) = env.operator.as_mut().map(|c| c.try_wait()) {
            bail!("the operator exited ({st}):\n{}", tail(&op_log, 30));
        }
        if Instant::now() > deadline {
            bail!(
                "the operator is not ready after 60 s:\n{}",
                tail(&op_log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log(format!(
        "operator ready (pid {op_pid}, metrics on {metrics_addr}, poll interval {}s)",
        args.poll_interval
    ));
    res.operator_rss_before_pools_kib = rss_kib(op_pid).map(|r| r.0).unwrap_or(0);

    let op_m0 = scrape_operator(&http, &metrics_addr).await?;
    keep(env, "operator-0-before-pools", &op_m0);
    let api_m0 = scrape_apiserver(&cp).await?;
    keep(env, "apiserver-0-before-pools", &api_m0);
    let apf0 = parse_apf_all(&api_m0).0;
    let cpu0 = cpu_seconds(op_pid);

    // Create the pools.
    log(format!(
        "creating {} WorkPools x {} pods in {} namespaces ({total_pods} pods on {nodes} nodes)",
        args.pools, args.pods, args.namespaces
    ));
    let t0 = Instant::now();
    let ar = workpool_resource();
    let url_spec = match args.queue_url {
        QueueUrl::Secret => json!({"urlSecretRef": {"name": "workpool-redis", "key": "url"}}),
        QueueUrl::Inline => json!({"url": redis_url}),
    };
    let creator = {
        let objects = (0..args.pools)
            .map(|i| {
                json!({
                    "apiVersion": "workpool.dev/v1alpha1",
                    "kind": "WorkPool",
                    "metadata": {"name": format!("pool-{i:04}"), "namespace": namespace_of(i, args.namespaces)},
                    "spec": {
                        "queue": {"redis": url_spec},
                        "replicas": args.pods,
                        "template": {"spec": {"containers": [{
                            "name": "worker",
                            "image": "workpool-worker:scale-bench",
                            "args": ["run", "--builtin", "sleep"],
                        }]}},
                    },
                })
            })
            .collect();
        spawn_creates(admin.clone(), ar, objects, args.create_concurrency)
    };
    let mut creator = Some(creator);

    // Watch it converge.
    let timeout = Duration::from_secs(args.timeout_seconds);
    let mut last_print = Instant::now();
    let mut peak = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let el = t0.elapsed().as_secs_f64();
        if let Some(c) = &creator
            && c.is_finished()
        {
            creator.take().expect("checked").await??;
            res.pools_created_s = Some(el);
            log(format!("{} WorkPools created in {el:.1}s", args.pools));
        }
        if let Some(Ok(Some(st))) = env.operator.as_mut().map(|c| c.try_wait()) {
            bail!("the operator exited ({st}):\n{}", tail(&op_log, 30));
        }
        if let Some((rss, hwm)) = rss_kib(op_pid) {
            peak = peak.max(hwm).max(rss);
        }
        let (created, scheduled, running, pools_ready) = {
            let o = obs.lock().unwrap_or_else(|p| p.into_inner());
            (
                o.pods.len(),
                o.pods.values().filter(|v| v.0).count(),
                o.pods.values().filter(|v| v.1).count(),
                o.pools.values().filter(|r| **r).count(),
            )
        };
        if res.all_pods_created_s.is_none() && created >= total_pods {
            res.all_pods_created_s = Some(el);
        }
        if res.all_pods_scheduled_s.is_none() && scheduled >= total_pods {
            res.all_pods_scheduled_s = Some(el);
        }
        if res.all_pods_running_s.is_none() && running >= total_pods {
            res.all_pods_running_s = Some(el);
        }
        if res.all_pools_ready_s.is_none() && pools_ready >= args.pools {
            res.all_pools_ready_s = Some(el);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            log(format!(
                "t={el:.0}s pods created {created}/{total_pods} scheduled {scheduled} running+ready {running}; pools ready {pools_ready}/{}; operator RSS {}",
                args.pools,
                rss_kib(op_pid).map(|r| mib(r.0)).unwrap_or_default()
            ));
        }
        if creator.is_none()
            && res.all_pods_running_s.is_some()
            && res.all_pools_ready_s.is_some()
            && running == total_pods
            && pools_ready == args.pools
            && created == total_pods
        {
            res.converged_s = Some(el);
            break;
        }
        if t0.elapsed() > timeout {
            bail!(
                "not converged after {}s: pods created {created}/{total_pods}, scheduled {scheduled}, running+ready {running}, pools ready {pools_ready}/{}",
                args.timeout_seconds,
                args.pools
            );
        }
    }
    let op_m1 = scrape_operator(&http, &metrics_addr).await?;
    keep(env, "operator-1-converged", &op_m1);
    let api_m1 = scrape_apiserver(&cp).await?;
    keep(env, "apiserver-1-converged", &api_m1);
    let apf1 = parse_apf_all(&api_m1).0;
    let cpu1 = cpu_seconds(op_pid);
    res.operator_rss_converged_kib = rss_kib(op_pid).map(|r| r.0).unwrap_or(0);
    log(format!(
        "converged in {:.1}s; settling {}s, then counting for {}s",
        res.converged_s.unwrap_or_default(),
        args.settle_seconds,
        args.idle_seconds
    ));
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;

    // Nothing changes from here on: count what the operator asks of the API server.
    let op_m2 = scrape_operator(&http, &metrics_addr).await?;
    keep(env, "operator-2-idle-start", &op_m2);
    let api_m2 = scrape_apiserver(&cp).await?;
    keep(env, "apiserver-2-idle-start", &api_m2);
    let apf2 = parse_apf_all(&api_m2).0;
    let cpu2 = cpu_seconds(op_pid);
    let (pe0, we0) = {
        let o = obs.lock().unwrap_or_else(|p| p.into_inner());
        (o.pod_events, o.pool_events)
    };
    let idle_start = Instant::now();
    while idle_start.elapsed() < Duration::from_secs(args.idle_seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, hwm)) = rss_kib(op_pid) {
            peak = peak.max(hwm).max(rss);
        }
        if let Some(Ok(Some(st))) = env.operator.as_mut().map(|c| c.try_wait()) {
            bail!("the operator exited ({st}):\n{}", tail(&op_log, 30));
        }
    }
    let idle = idle_start.elapsed().as_secs_f64();
    let op_m3 = scrape_operator(&http, &metrics_addr).await?;
    keep(env, "operator-3-idle-end", &op_m3);
    let api_m3 = scrape_apiserver(&cp).await?;
    keep(env, "apiserver-3-idle-end", &api_m3);
    let apf3 = parse_apf_all(&api_m3).0;
    let cpu3 = cpu_seconds(op_pid);
    {
        let o = obs.lock().unwrap_or_else(|p| p.into_inner());
        res.idle_pod_events = o.pod_events - pe0;
        res.idle_pool_events = o.pool_events - we0;
    }
    res.idle_seconds = idle;
    if let Some((rss, hwm)) = rss_kib(op_pid) {
        res.operator_rss_idle_end_kib = rss;
        peak = peak.max(hwm);
    }
    res.operator_rss_peak_kib = peak;
    res.operator_cpu_converge_s = cpu1 - cpu0;
    res.operator_cpu_idle_s = cpu3 - cpu2;

    const H: &str = "workpool_reconcile_duration_seconds";
    let conv = Histogram::parse(&op_m1, H).minus(&Histogram::parse(&op_m0, H));
    let idle_h = Histogram::parse(&op_m3, H).minus(&Histogram::parse(&op_m2, H));
    res.reconciles_converge = conv.count;
    res.reconcile_converge_p50_s = conv.quantile(0.5).map(|q| q.0);
    res.reconcile_converge_p99_s = conv.quantile(0.99).map(|q| q.0);
    res.reconcile_converge_mean_s = conv.mean();
    res.reconciles_idle = idle_h.count;
    res.reconcile_idle_p50_s = idle_h.quantile(0.5).map(|q| q.0);
    res.reconcile_idle_p99_s = idle_h.quantile(0.99).map(|q| q.0);
    res.reconcile_idle_mean_s = idle_h.mean();
    res.requests_converge = apf_delta(&apf0, &apf1);
    res.requests_idle = apf_delta(&apf2, &apf3);
    res.server_writes_converge = server_writes(&api_m0, &api_m1);
    res.operator_reconcile_errors = sum_counter(&op_m3, "workpool_reconcile_errors_total");
    res.targets = targets(args, res);

    print_report(args, res, &conv, &idle_h);
    Ok(())
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
}

fn print_report(args: &Args, r: &Results, conv: &Histogram, idle: &Histogram) {
    let mut o = String::new();
    let total = r.pools * r.pods_per_pool as usize;
    o.push_str(&format!(
        "\n## workpool-scale-bench: {} WorkPools x {} pods ({total} pods) on {} KWOK nodes, {} namespaces, poll interval {} s, queue URL {}\n\n",
        r.pools, r.pods_per_pool, r.nodes, r.namespaces, r.poll_interval_s, r.queue_url
    ));
    let peer = |v: String| if r.peer { v } else { "-".into() };
    o.push_str(&format!(
        "| what | workpool-operator | peer: {} Deployments x {}, kube-controller-manager |\n| --- | --- | --- |\n",
        r.pools, r.pods_per_pool
    ));
    let rows: Vec<(String, String, String)> = vec![
        (
            "pools (WorkPools / Deployments) created, from the first create".into(),
            secs(r.pools_created_s),
            peer(secs(r.peer_pools_created_s)),
        ),
        (
            format!("all {total} pods created"),
            secs(r.all_pods_created_s),
            peer(secs(r.peer_all_pods_created_s)),
        ),
        (
            "all pods scheduled".into(),
            secs(r.all_pods_scheduled_s),
            peer(secs(r.peer_all_pods_scheduled_s)),
        ),
        (
            "all pods Running and Ready".into(),
            secs(r.all_pods_running_s),
            peer(secs(r.peer_all_pods_running_s)),
        ),
        (
            format!(
                "every status: {} of {} ready",
                r.pods_per_pool, r.pods_per_pool
            ),
            secs(r.all_pools_ready_s),
            peer(secs(r.peer_all_pools_ready_s)),
        ),
        (
            "**converged**".into(),
            format!("**{}**", secs(r.converged_s)),
            peer(match (r.peer_converged_s, r.peer_not_converged_after_s) {
                (None, Some(limit)) => format!("**not within {limit:.0} s**"),
                (converged, _) => format!("**{}**", secs(converged)),
            }),
        ),
        (
            "RSS: before the pools / converged / end of idle".into(),
            format!(
                "{} / {} / {}",
                mib(r.operator_rss_before_pools_kib),
                mib(r.operator_rss_converged_kib),
                mib(r.operator_rss_idle_end_kib)
            ),
            peer(format!("- / {} / -", mib(r.peer_rss_converged_kib))),
        ),
        (
            "RSS peak (VmHWM)".into(),
            mib(r.operator_rss_peak_kib),
            peer(format!("{} (every controller)", mib(r.peer_rss_peak_kib))),
        ),
        (
            "CPU: converging / idle window".into(),
            format!(
                "{:.1} s / {:.1} s ({:.1}% of a core)",
                r.operator_cpu_converge_s,
                r.operator_cpu_idle_s,
                100.0 * r.operator_cpu_idle_s / r.idle_seconds.max(1.0)
            ),
            peer(format!(
                "{:.1} s / {:.1} s ({:.1}% of a core; every controller)",
                r.peer_cpu_converge_s,
                r.peer_cpu_idle_s,
                100.0 * r.peer_cpu_idle_s / r.idle_seconds.max(1.0)
            )),
        ),
        (
            "reconciles while converging (peer: replicaset syncs)".into(),
            format!("{:.0}", r.reconciles_converge),
            peer(format!("{:.0}", r.peer_reconciles_converge)),
        ),
        (
            "reconcile p50 / p99 while converging".into(),
            format!("{} / {}", fmt_q(conv, 0.5), fmt_q(conv, 0.99)),
            peer(format!(
                "{} / {} (buckets are powers of ten)",
                ms(r.peer_reconcile_converge_p50_s.map(|s| s * 1e3)),
                ms(r.peer_reconcile_converge_p99_s.map(|s| s * 1e3)),
            )),
        ),
        (
            "reconcile mean while converging".into(),
            r.reconcile_converge_mean_s
                .map(|m| format!("{:.2} ms", m * 1e3))
                .unwrap_or_else(|| "-".into()),
            peer(
                r.peer_reconcile_converge_mean_s
                    .map(|m| format!("{:.2} ms", m * 1e3))
                    .unwrap_or_else(|| "-".into()),
            ),
        ),
        (
            "deployment syncs while converging: count / p99 / mean".into(),
            "-".into(),
            peer(format!(
                "{:.0} / {} / {}",
                r.peer_deployment_syncs_converge,
                ms(r.peer_deployment_sync_converge_p99_s.map(|s| s * 1e3)),
                ms(r.peer_deployment_sync_converge_mean_s.map(|s| s * 1e3)),
            )),
        ),
        (
            format!("reconciles in the idle window ({:.0} s)", r.idle_seconds),
            format!(
                "{:.0} ({:.1}/s)",
                r.reconciles_idle,
                r.reconciles_idle / r.idle_seconds.max(1.0)
            ),
            "-".into(),
        ),
        (
            "reconcile p50 / p99 idle".into(),
            format!("{} / {}", fmt_q(idle, 0.5), fmt_q(idle, 0.99)),
            "-".into(),
        ),
        (
            "reconcile errors (total)".into(),
            format!("{:.0}", r.operator_reconcile_errors),
            "-".into(),
        ),
        (
            "pod / pool changes seen in the idle window".into(),
            format!("{} / {}", r.idle_pod_events, r.idle_pool_events),
            "-".into(),
        ),
    ];
    for (k, v, p) in rows {
        o.push_str(&format!("| {k} | {v} | {p} |\n"));
    }
    o.push_str("\nAPI requests, counted by the API server per FlowSchema (the operator's user; the peer's deployment and replicaset controllers):\n\n");
    o.push_str(
        "| class | operator converging | operator idle | operator idle req/s | peer converging | peer idle |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let classes = [
        "leases",
        "secrets",
        "events",
        "pod-writes",
        "pool-writes",
        "watches",
        "other",
    ];
    let (mut tc, mut ti, mut pc, mut pi) = (0.0, 0.0, 0.0, 0.0);
    let get = |m: &BTreeMap<String, f64>, c: &str| m.get(c).copied().unwrap_or(0.0);
    for c in classes {
        let (a, b) = (get(&r.requests_converge, c), get(&r.requests_idle, c));
        let (x, y) = (
            get(&r.peer_requests_converge, c),
            get(&r.peer_requests_idle, c),
        );
        tc += a;
        ti += b;
        pc += x;
        pi += y;
        o.push_str(&format!(
            "| {c} | {a:.0} | {b:.0} | {:.2} | {} | {} |\n",
            b / r.idle_seconds.max(1.0),
            peer(format!("{x:.0}")),
            peer(format!("{y:.0}")),
        ));
    }
    o.push_str(&format!(
        "| **all** | {tc:.0} | {ti:.0} | **{:.2}** | {} | {} |\n",
        ti / r.idle_seconds.max(1.0),
        peer(format!("{pc:.0}")),
        peer(format!("{pi:.0}")),
    ));
    o.push_str("\nWrites, timed by the API server (while converging): count, mean / p99:\n\n| request | operator | peer |\n| --- | --- | --- |\n");
    for (name, ..) in TIMED_WRITES {
        let cell = |m: &BTreeMap<String, ServerLatency>| {
            m.get(name)
                .map(|l| format!("{:.0}, {} / {}", l.count, ms(l.mean_ms), ms(l.p99_ms)))
                .unwrap_or_else(|| "-".into())
        };
        o.push_str(&format!(
            "| {name} | {} | {} |\n",
            cell(&r.server_writes_converge),
            peer(cell(&r.peer_server_writes_converge)),
        ));
    }
    o.push_str("\nTargets (issue #19):\n\n| target | measured | bound | met |\n| --- | --- | --- | --- |\n");
    for (name, t) in &r.targets {
        o.push_str(&format!(
            "| {name} | {} | ≤ {} {} | {} |\n",
            t.value
                .map(|v| format!("{v:.2} {}", t.unit))
                .unwrap_or_else(|| "-".into()),
            t.bound,
            t.unit,
            if t.met { "yes" } else { "**no**" }
        ));
    }
    if !r.peer {
        o.push_str("| converged_vs_peer | - (--no-peer) | ≤ 1.1 x | - |\n");
    }
    for (name, t) in &r.targets {
        if let Some(why) = &t.why {
            o.push_str(&format!("\n{name} missed: {why}.\n"));
        }
    }
    if let Some(limit) = r.peer_not_converged_after_s {
        o.push_str(&format!(
            "\nThe peer did not converge within {limit:.0} s: converged_vs_peer is against that limit, an upper bound.\n"
        ));
    }
    o.push_str(&format!(
        "\nreproduce: cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools {} --pods {} --namespaces {} --nodes {} --poll-interval {} --queue-url {} --idle-seconds {}{}\n",
        r.pools,
        r.pods_per_pool,
        r.namespaces,
        r.nodes,
        r.poll_interval_s,
        r.queue_url,
        args.idle_seconds,
        if r.peer { "" } else { " --no-peer" }
    ));
    println!("{o}");
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Not the kube client's warning that the controller manager's
                // self-signed serving certificate is not verified (on purpose).
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,kube_client::client::tls=error")
                }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    if args.pools == 0 || args.pods == 0 {
        eprintln!("--pools and --pods must be at least 1");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut env = Env::default();
    let mut res = Results::default();
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&args, &mut env, &mut res) => r,
            _ = shutdown_signal() => Err(anyhow!("interrupted")),
        }
    });
    if let Err(e) = &outcome {
        log(format!("failed: {e:#}"));
    }
    if let Some(p) = &args.json {
        match serde_json::to_string_pretty(&res) {
            Ok(s) => {
                if let Err(e) = std::fs::write(p, s) {
                    log(format!("cannot write {}: {e}", p.display()));
                }
            }
            Err(e) => log(format!("results as JSON: {e}")),
        }
    }
    if let Some(dir) = &args.logs {
        env.copy_logs(dir);
    }
    log("stopping everything");
    // The watches first, so that they do not see the API server go away.
    rt.shutdown_timeout(Duration::from_secs(5));
    env.teardown();
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
