//! A real Kubernetes node for the test cluster: `containerd` + `runc` + the CNI bridge
//! plugin, the `kubelet` and `kube-proxy` built from Kubernetes' source
//! (`scripts/k8s-bin.sh`), and images built from our binaries ([`images`]).
//!
//! Each [`Node`] lives in a network namespace of its own (`wpn<slot>`), joined to the host
//! by a veth pair (`10.251.<slot>.1` on the host, `10.251.<slot>.2` in the node: the Node's
//! InternalIP, where the kubelet serves). Inside it: the CNI bridge `wpbr0` with the pod
//! CIDR the controller manager gives the Node, kube-proxy's rules, and the node's
//! containerd and kubelet (they share the host's mount namespace, so volume mounts work).
//! The node namespace has no default route: its only routes lead to the pods, to the host
//! end of the veth and to the API server's advertised address on this machine, so
//! nothing a pod sends can leave the machine. The host gets a route to the pod CIDR through
//! the node, so tests reach pod IPs directly.
//!
//! Teardown (drop, also while unwinding from a panic, and by a watchdog process when the
//! test process dies without unwinding) kills the node's processes and every process in
//! its cgroups, unmounts everything under its directory, deletes the network namespace
//! (with the bridge, veths and all iptables rules in it), the host route and the cgroups.
//!
//! Differences from a real node, found on these machines: containerd's CRI plugin runs
//! with `restrict_oom_score_adj` (the sandbox lacks `CAP_SYS_RESOURCE`, so runc cannot set
//! the negative `oom_score_adj` the kubelet asks for sandboxes); the kubelet runs on
//! cgroup v1 (`failCgroupV1: false`), with eviction thresholds at 0 and no swap check.

pub mod addons;
pub mod images;
pub mod storage;

use crate::controlplane::{self, ControlPlane};
use anyhow::{Context, Result, anyhow, bail};
use images::ImageSpec;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The image of the test probe program (`workpool-node-probe`), imported into every node.
pub const PROBE_IMAGE: &str = "ghcr.io/workpool-dev/node-probe:test";
/// The sandbox (pause) image containerd runs for every pod; built from `workpool-pause`.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// References the worker image is imported under (with the chart's appVersion as well).
pub const WORKER_REPOSITORY: &str = "ghcr.io/workpool-dev/workpool-worker";
pub const OPERATOR_REPOSITORY: &str = "ghcr.io/workpool-dev/workpool-operator";
pub const REDIS_REPOSITORY: &str = "ghcr.io/workpool-dev/workpool-redis";
/// The cluster DNS Service address (`kube-dns`), as kubeadm and kind have it.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Number of node slots (network namespaces `wpn0` ... on this machine).
const SLOTS: u8 = 200;
const SLOT_DIR: &str = "/run/workpool-node";
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How to start a [`Node`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Node name (`None`: `wpn<slot>-<random>`).
    pub name: Option<String>,
    /// Labels the kubelet registers the Node with (`--node-labels`).
    pub labels: Vec<(String, String)>,
    /// Extra images, `--image IMAGE=PATH` semantics: exactly that reference (`:latest`
    /// when no tag), entrypoint the program under its own file name, plus its libraries.
    pub images: Vec<(String, PathBuf)>,
    /// Run kube-proxy (Services). Default: true (see [`NodeOptions::new`]).
    pub kube_proxy: bool,
    /// Taints the kubelet registers the Node with (`KEY[=VALUE]:EFFECT`).
    pub taints: Vec<String>,
}

impl NodeOptions {
    pub fn new() -> Self {
        NodeOptions {
            kube_proxy: true,
            ..Default::default()
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// A taint `key:effect` (e.g. `NoSchedule`) the Node is registered with.
    pub fn taint(mut self, key: &str, effect: &str) -> Self {
        self.taints.push(format!("{key}:{effect}"));
        self
    }

    pub fn image(mut self, reference: &str, program: &Path) -> Self {
        self.images
            .push((reference.to_string(), program.to_path_buf()));
        self
    }
}

/// Why a real node cannot run here (`None` when it can): not root, a missing package or
/// binary; the text says what is missing and how to get it.
pub fn unavailable_reason() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("the real node needs root (network namespaces, mounts, cgroups)".into());
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("flock", "util-linux"),
    ] {
        if images::which(tool).is_none() && !Path::new("/usr/sbin").join(tool).is_file() {
            return Some(format!(
                "the real node needs `{tool}` (apt-get install {package})"
            ));
        }
    }
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            return Some(format!(
                "the real node needs the CNI plugin {CNI_BIN_DIR}/{plugin} (apt-get install containernetworking-plugins)"
            ));
        }
    }
    match controlplane::bin_dir() {
        Ok(dir) => {
            for c in ["kubelet", "kube-proxy"] {
                if !dir.join(c).is_file() {
                    return Some(format!(
                        "{c} is not built in {} (run scripts/k8s-bin.sh)",
                        dir.display()
                    ));
                }
            }
        }
        Err(e) => return Some(format!("no Kubernetes binaries: {e:#}")),
    }
    if BinaryDirs::locate().find("workpool-pause").is_none() {
        return Some(
            "workpool-pause, the pods' sandbox program, is not built (cargo build -p workpool-tests --bins)"
                .into(),
        );
    }
    None
}

const CNI_BIN_DIR: &str = "/usr/lib/cni";

fn sbin(tool: &str) -> PathBuf {
    images::which(tool).unwrap_or_else(|| Path::new("/usr/sbin").join(tool))
}

/// A held node slot: a lock file under `/run/workpool-node`, free again when dropped.
struct Slot {
    index: u8,
    _lock: nix::fcntl::Flock<File>,
}

impl Slot {
    fn acquire() -> Result<Slot> {
        std::fs::create_dir_all(SLOT_DIR)?;
        for index in 0..SLOTS {
            let path = Path::new(SLOT_DIR).join(format!("slot-{index}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            if let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let slot = Slot { index, _lock: lock };
                // The watchdog of a process that ended may still be tearing its node down
                // in this slot: it holds the slot's teardown lock until it is done.
                let teardown = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(slot.teardown_lock())?;
                drop(
                    nix::fcntl::Flock::lock(teardown, nix::fcntl::FlockArg::LockExclusive)
                        .map_err(|(_, e)| anyhow!("waiting for a teardown in slot {index}: {e}"))?,
                );
                // A namespace left by a process that died before its watchdog could clean
                // up (e.g. the machine's session ended): remove it.
                let ns = slot.netns();
                if Path::new("/run/netns").join(&ns).exists() {
                    let _ = run_quiet(Command::new("ip").args(["netns", "delete", &ns]));
                }
                let _ = run_quiet(Command::new("ip").args(["link", "delete", &slot.host_veth()]));
                // A node whose process and watchdog were both killed: torn down now.
                reap_abandoned(index);
                return Ok(slot);
            }
        }
        bail!("all {SLOTS} node slots under {SLOT_DIR} are taken")
    }

    /// Where the directory of the node using this slot is recorded.
    fn record(&self) -> PathBuf {
        record_path(self.index)
    }

    fn netns(&self) -> String {
        format!("wpn{}", self.index)
    }
    /// Held by the node's watchdog for its whole life, so the slot is not reused before its
    /// teardown has finished.
    fn teardown_lock(&self) -> PathBuf {
        Path::new(SLOT_DIR).join(format!("slot-{}.teardown", self.index))
    }
    fn host_veth(&self) -> String {
        format!("wpn{}h", self.index)
    }
    fn node_veth(&self) -> String {
        format!("wpn{}n", self.index)
    }
    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.index, 1)
    }
    fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.index, 2)
    }
    fn cgroup_root(&self) -> String {
        format!("workpool-node-{}", self.index)
    }
}

/// The record of which node directory uses slot `index`: written when a node starts,
/// removed by its teardown. A record whose slot nobody holds names an abandoned node.
fn record_path(index: u8) -> PathBuf {
    Path::new(SLOT_DIR).join(format!("slot-{index}.node"))
}

/// Tears down the node recorded for slot `index`, if its directory is still there. The
/// caller holds the slot, and no watchdog is tearing it down (its teardown lock is free):
/// the node's process and its watchdog are gone without a teardown (both were killed,
/// e.g. with the whole session), leaving its containers, shims, mounts and directory.
fn reap_abandoned(index: u8) {
    let record = record_path(index);
    let Ok(dir) = std::fs::read_to_string(&record) else {
        return;
    };
    let script = Path::new(dir.trim()).join("teardown.sh");
    if script.is_file() {
        tracing::warn!(
            "tearing down the abandoned node of slot {index} in {}",
            dir.trim()
        );
        // The script removes the directory it lives in: run a copy from outside it.
        let copy = std::env::temp_dir().join(format!("workpool-node-reap-{index}.sh"));
        if std::fs::copy(&script, &copy).is_ok() {
            let _ = Command::new("sh")
                .arg(&copy)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(&copy);
        }
    }
    let _ = std::fs::remove_file(&record);
}

/// Tears down every abandoned node on this machine: one recorded for a slot that no
/// process holds and no watchdog is tearing down (see [`reap_abandoned`]). Run by
/// [`Node::start`]; cheap when there is nothing to do.
pub fn reap_abandoned_nodes() {
    let Ok(entries) = std::fs::read_dir(SLOT_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("slot-")
            .and_then(|n| n.strip_suffix(".node"))
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        let open = |path: PathBuf| {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .ok()
        };
        let lock = |file: File| {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
        };
        let slot = open(Path::new(SLOT_DIR).join(format!("slot-{index}.lock"))).and_then(lock);
        let teardown =
            open(Path::new(SLOT_DIR).join(format!("slot-{index}.teardown"))).and_then(lock);
        if slot.is_some() && teardown.is_some() {
            reap_abandoned(index);
        }
    }
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A running real node; stopped and cleaned up on drop.
pub struct Node {
    name: String,
    slot: Option<Slot>,
    dir: PathBuf,
    pod_cidr: String,
    kubectl: PathBuf,
    admin_kubeconfig: PathBuf,
    containerd_socket: PathBuf,
    children: Vec<(String, Child)>,
    watchdog: Option<Child>,
    watchdog_stdin: Option<ChildStdin>,
    provisioner: Option<storage::Provisioner>,
    started_in: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("pod_cidr", &self.pod_cidr)
            .finish()
    }
}

impl Node {
    /// Starts a node registered with `cp` and waits until it is Ready. Blocking (call it
    /// from `spawn_blocking` in async code).
    pub fn start(cp: &ControlPlane, options: NodeOptions) -> Result<Node> {
        if let Some(reason) = unavailable_reason() {
            bail!("{reason}");
        }
        let started = Instant::now();
        reap_abandoned_nodes();
        let slot = Slot::acquire()?;
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("wpn{}-{:04x}", slot.index, rand::random::<u16>()));
        let dir = tempfile::Builder::new()
            .prefix("workpool-node-")
            .tempdir()
            .context("creating the node's directory")?
            .keep();
        let mut node = Node {
            name,
            dir,
            pod_cidr: String::new(),
            kubectl: cp.bin_dir().join("kubectl"),
            admin_kubeconfig: cp.admin_kubeconfig().to_path_buf(),
            containerd_socket: PathBuf::new(),
            children: Vec::new(),
            watchdog: None,
            watchdog_stdin: None,
            provisioner: None,
            started_in: Duration::ZERO,
            slot: Some(slot),
        };
        node.containerd_socket = node.dir.join("containerd.sock");
        node.write_teardown_script()?;
        std::fs::write(node.slot().record(), node.dir.display().to_string())
            .context("recording the node's slot")?;
        node.start_watchdog()?;
        node.boot(cp, &options)
            .map_err(|e| anyhow!("{e:#}\n{}", node.log_tails()))?;
        node.started_in = started.elapsed();
        tracing::info!(
            node = %node.name,
            pod_cidr = %node.pod_cidr,
            "real node Ready in {:.1}s",
            node.started_in.as_secs_f64()
        );
        Ok(node)
    }

    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("slot held while the node runs")
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's InternalIP (the node end of its veth; the kubelet serves here, and the
    /// host reaches it directly).
    pub fn internal_ip(&self) -> Ipv4Addr {
        self.slot().node_ip()
    }

    /// The host's address as pods see it (the host end of the node's veth): a server a
    /// test starts on the host bound to this address (or 0.0.0.0) is reachable from pods.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.slot().host_ip()
    }

    /// Lets this node's pods reach `address`, an address of this machine outside the
    /// node (e.g. the host address of another node, where a test's server listens): a
    /// route through the host end of the node's veth.
    pub fn route_to_host(&self, address: Ipv4Addr) -> Result<()> {
        self.ns_exec(&[
            "ip",
            "route",
            "replace",
            &format!("{address}/32"),
            "via",
            &self.host_ip().to_string(),
        ])
        .map(|_| ())
    }

    /// The node's network namespace (`ip netns exec NAME ...` runs a command there).
    pub fn netns(&self) -> String {
        self.slot().netns()
    }

    /// The pod CIDR the controller manager gave the Node.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// The node's containerd socket (`ctr --address SOCKET -n k8s.io ...`).
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd_socket
    }

    /// The node's directory (logs: `containerd.log`, `kubelet.log`, `kube-proxy.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Node::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The node of this process's shared control plane ([`ControlPlane::shared`]),
    /// started by the first caller (blocking: call it from `spawn_blocking` in async
    /// code) and never stopped before the process ends, when its watchdog tears it
    /// down. Untainted: every pod of the shared control plane that asks for no other node
    /// runs here. The images are those of [`Node::start`]: build the programs first (the
    /// worker image is made from `target/debug/workpool-worker` as it is at this call).
    /// A failed start is remembered and returned to every later caller.
    pub fn shared() -> Result<&'static Node> {
        type SharedNode = Option<std::result::Result<&'static Node, String>>;
        static SHARED: std::sync::Mutex<SharedNode> = std::sync::Mutex::new(None);
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let started = unavailable_reason()
                .map_or(Ok(()), |reason| Err(anyhow!("{reason}")))
                .and_then(|()| ControlPlane::shared())
                .and_then(|cp| Node::start(&cp, NodeOptions::new()))
                .map(|node| &*Box::leak(Box::new(node)));
            *slot = Some(started.map_err(|e| format!("the real node: {e:#}")));
        }
        match slot.as_ref() {
            Some(Ok(node)) => Ok(node),
            Some(Err(e)) => Err(anyhow!("{e}")),
            None => Err(anyhow!("the shared node was not started")),
        }
    }

    /// The host PID of a container's main process (PID 1 in the container), from the
    /// node's containerd (`ctr task ls`). `container_id` as the pod's status has it
    /// (`containerd://<id>`) or bare.
    pub fn container_pid(&self, container_id: &str) -> Result<i32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let out = run(Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["-n", "k8s.io", "task", "ls"]))?;
        // TASK  PID  STATUS
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?, f.next()?))
            })
            .find(|(task, _, _)| *task == id)
            .and_then(|(_, pid, _)| pid.parse().ok())
            .filter(|pid: &i32| *pid > 0)
            .ok_or_else(|| anyhow!("container {id} has no running task on node {}", self.name))
    }

    /// Sends `signal` to a container's main process from the host, as `kill -SIG PID`
    /// would: `SIGKILL` is a crash (the container ends with 137, its pid namespace with
    /// it), `SIGSTOP`/`SIGCONT` freeze and thaw it.
    pub fn signal_container(
        &self,
        container_id: &str,
        signal: nix::sys::signal::Signal,
    ) -> Result<()> {
        let pid = self.container_pid(container_id)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("kill -{signal} {pid} (container {container_id})"))
    }

    /// The log of a pod's container as the kubelet keeps it on this node (every run of
    /// it, oldest first), or `None` when the node has none.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let prefix = format!("{namespace}_{pod}_");
        let pod_dir = std::fs::read_dir(self.dir.join("pod-logs"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
            .path();
        let mut logs: Vec<(u32, PathBuf)> = std::fs::read_dir(pod_dir.join(container))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let restart = name.strip_suffix(".log")?.parse().ok()?;
                Some((restart, e.path()))
            })
            .collect();
        logs.sort();
        let text: Vec<String> = logs
            .iter()
            .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
            .collect();
        (!text.is_empty()).then(|| text.concat())
    }

    /// Builds an image for `program` (`--image IMAGE=PATH` semantics) and imports it.
    pub fn import_program(&self, reference: &str, program: &Path) -> Result<()> {
        self.import(&ImageSpec::for_program(reference, program)?)
    }

    /// Imports an image into the node's containerd.
    pub fn import(&self, spec: &ImageSpec) -> Result<()> {
        spec.import(&self.containerd_socket, &self.dir.join("images"))
    }

    /// Adds `extra` as another reference of the imported image `reference`.
    pub fn tag(&self, reference: &str, extra: &str) -> Result<()> {
        run_quiet(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd_socket)
                .args(["-n", "k8s.io", "images", "tag", "--force"])
                .arg(images::qualify_reference(reference))
                .arg(images::qualify_reference(extra)),
        )
    }

    /// A command run in the node's network namespace (only the network namespace).
    pub fn command_in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(sbin("nsenter"));
        cmd.arg(format!("--net=/run/netns/{}", self.netns()))
            .arg(program);
        cmd
    }

    /// The last lines of the node's logs, for error messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for log in ["containerd.log", "kubelet.log", "kube-proxy.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(log)) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                out.push_str(&format!("--- {log} (last lines)\n{}\n", tail.join("\n")));
            }
        }
        out
    }

    fn boot(&mut self, cp: &ControlPlane, options: &NodeOptions) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        self.setup_network(cp)?;
        self.setup_cgroups()?;
        self.start_containerd(deadline)?;
        self.import_images(options)?;
        let node_kubeconfig = self.kubeconfig_for(
            cp,
            &format!("system:node:{}", self.name),
            &["system:nodes"],
            "kubelet.kubeconfig",
        )?;
        self.start_kubelet(cp, &node_kubeconfig, options)?;
        self.pod_cidr = self.wait_pod_cidr(deadline)?;
        self.write_cni_config()?;
        self.route_pod_cidr()?;
        if options.kube_proxy {
            let proxy_kubeconfig =
                self.kubeconfig_for(cp, "system:kube-proxy", &[], "kube-proxy.kubeconfig")?;
            self.start_kube_proxy(cp, &proxy_kubeconfig)?;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        run(Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(["wait", "--for=condition=Ready"])
            .arg(format!("node/{}", self.name))
            .arg(format!("--timeout={left}s")))
        .context("waiting for the Node to be Ready")?;
        self.provisioner = Some(storage::Provisioner::start(
            self.kubectl.clone(),
            self.admin_kubeconfig.clone(),
            self.name.clone(),
            self.dir.clone(),
        ));
        Ok(())
    }

    fn ns_exec(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns()])
            .args(args))
    }

    fn setup_network(&mut self, cp: &ControlPlane) -> Result<()> {
        let slot = self.slot();
        let (ns, hv, nv) = (slot.netns(), slot.host_veth(), slot.node_veth());
        let (host_ip, node_ip) = (slot.host_ip(), slot.node_ip());
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip").args(["link", "add", &hv, "type", "veth", "peer", "name", &nv]))?;
        run(Command::new("ip").args(["link", "set", &nv, "netns", &ns]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", &hv]))?;
        run(Command::new("ip").args(["link", "set", &hv, "up"]))?;
        self.ns_exec(&["ip", "link", "set", "lo", "up"])?;
        self.ns_exec(&["ip", "addr", "add", &format!("{node_ip}/30"), "dev", &nv])?;
        self.ns_exec(&["ip", "link", "set", &nv, "up"])?;
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/route_localnet", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
        ] {
            self.ns_exec(&["sh", "-c", &format!("echo {value} > /proc/sys/{key}")])
                .with_context(|| format!("setting {key} in the node's namespace"))?;
        }
        // The API server is reached at its advertised address on this machine, through
        // the host end of the veth; the source is rewritten to the node's address so the
        // host answers without a route to the pods.
        let api = cp.advertise_address();
        if api.is_loopback() {
            bail!(
                "the API server advertises a loopback address ({api}): pods of a real node cannot reach it"
            );
        }
        self.ns_exec(&[
            "ip",
            "route",
            "add",
            &format!("{api}/32"),
            "via",
            &host_ip.to_string(),
        ])?;
        self.ns_exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            &nv,
            "-j",
            "MASQUERADE",
            "-m",
            "comment",
            "--comment",
            "workpool node: pods to the host",
        ])?;
        Ok(())
    }

    fn setup_cgroups(&self) -> Result<()> {
        let root = self.slot().cgroup_root();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
            let hierarchy = hierarchy?.path();
            let name = hierarchy.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "unified" || !hierarchy.is_dir() {
                continue;
            }
            if !hierarchy.join("cgroup.procs").exists() {
                continue;
            }
            let dir = hierarchy.join(&root);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            if name == "cpuset" {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(hierarchy.join(f))?;
                    std::fs::write(dir.join(f), v.trim())?;
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self, what: &str, program: &Path, args: &[String]) -> Result<()> {
        let log = File::create(self.dir.join(format!("{what}.log")))?;
        let child = self
            .command_in_netns(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut pids = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))?;
        writeln!(pids, "{}", child.id())?;
        self.children.push((what.to_string(), child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited: {status}");
            }
        }
        Ok(())
    }

    fn start_containerd(&mut self, deadline: Instant) -> Result<()> {
        let d = self.dir.display().to_string();
        let config = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
oom_score = 0
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    disable_apparmor = true
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{d}/cni"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{d}/containerd/state/runc"
          SystemdCgroup = false
"#,
            runc = sbin("runc").display()
        );
        std::fs::create_dir_all(self.dir.join("cni"))?;
        let path = self.dir.join("containerd.toml");
        std::fs::write(&path, config)?;
        let containerd = sbin("containerd");
        self.spawn(
            "containerd",
            &containerd,
            &["--config".into(), path.display().to_string()],
        )?;
        loop {
            self.check_alive()?;
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd_socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {}",
                    self.containerd_socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn import_images(&self, options: &NodeOptions) -> Result<()> {
        let bins = BinaryDirs::locate();
        let pause = bins.find("workpool-pause").ok_or_else(|| {
            anyhow!("workpool-pause is not built (cargo build -p workpool-tests --bins)")
        })?;
        self.import(&ImageSpec::for_program(PAUSE_IMAGE, &pause)?.user("65535:65535"))?;
        if let Some(probe) = bins.find("workpool-node-probe") {
            self.import(&ImageSpec::for_program(PROBE_IMAGE, &probe)?)?;
        }
        let version = chart_app_version().unwrap_or_else(|| "0.1.0".into());
        if let Some(worker) = bins.find("workpool-worker") {
            let reference = format!("{WORKER_REPOSITORY}:{version}");
            self.import(&images::worker_image(&reference, &worker)?)?;
            self.tag(&reference, &format!("{WORKER_REPOSITORY}:latest"))?;
        }
        if let Some(operator) = bins.find("workpool-operator") {
            let reference = format!("{OPERATOR_REPOSITORY}:{version}");
            self.import(&images::operator_image(&reference, &operator)?)?;
            self.tag(&reference, &format!("{OPERATOR_REPOSITORY}:latest"))?;
        }
        if images::which("redis-server").is_some() {
            let reference = format!("{REDIS_REPOSITORY}:{version}");
            self.import(&images::redis_image(&reference)?)?;
            for extra in ["docker.io/library/redis:7", "ghcr.io/workpool-dev/redis:7"] {
                self.tag(&reference, extra)?;
            }
        }
        if let Some(coredns) = coredns_binary() {
            self.import(&ImageSpec::for_program(COREDNS_IMAGE, &coredns)?.expose(53))?;
        }
        for (reference, program) in &options.images {
            self.import_program(reference, program)
                .with_context(|| format!("image {reference}={}", program.display()))?;
        }
        Ok(())
    }

    fn kubeconfig_for(
        &self,
        cp: &ControlPlane,
        user: &str,
        groups: &[&str],
        file: &str,
    ) -> Result<PathBuf> {
        // The node's processes live in its network namespace, where 127.0.0.1 is not the
        // host: they reach the API server at its advertised address.
        let path = cp.kubeconfig_for_user(user, groups)?;
        let text = std::fs::read_to_string(&path)?;
        let url = cp.server_url();
        let port = url.rsplit(':').next().unwrap_or("443");
        let text = text.replace(url, &format!("https://{}:{port}", cp.advertise_address()));
        let out = self.dir.join(file);
        std::fs::write(&out, text)?;
        Ok(out)
    }

    fn start_kubelet(
        &mut self,
        cp: &ControlPlane,
        kubeconfig: &Path,
        options: &NodeOptions,
    ) -> Result<()> {
        let d = self.dir.display().to_string();
        let resolv = self.dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\noptions ndots:1\n")?;
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
cgroupRoot: /{cgroup_root}
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
containerRuntimeEndpoint: unix://{d}/containerd.sock
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
evictionHard: {{memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}}
imageGCHighThresholdPercent: 100
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
resolvConf: {resolv}
serializeImagePulls: false
hairpinMode: hairpin-veth
protectKernelDefaults: false
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
# Each node its own: kubelets delete the pod log directories of pods they do not know,
# so two nodes sharing /var/log/pods delete each other's logs.
podLogsDir: {d}/pod-logs
"#,
            cgroup_root = self.slot().cgroup_root(),
            node_ip = self.internal_ip(),
            ca = cp.ca_cert_path().display(),
            resolv = resolv.display(),
        );
        let path = self.dir.join("kubelet.yaml");
        std::fs::write(&path, config)?;
        let labels: Vec<String> = options
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args = vec![
            format!("--config={}", path.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={d}/kubelet"),
            format!("--cert-dir={d}/kubelet-pki"),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", self.internal_ip()),
            "--v=1".into(),
        ];
        if !labels.is_empty() {
            args.push(format!("--node-labels={}", labels.join(",")));
        }
        if !options.taints.is_empty() {
            args.push(format!(
                "--register-with-taints={}",
                options.taints.join(",")
            ));
        }
        let kubelet = cp.bin_dir().join("kubelet");
        self.spawn("kubelet", &kubelet, &args)
    }

    fn wait_pod_cidr(&mut self, deadline: Instant) -> Result<String> {
        loop {
            self.check_alive()?;
            let cidr = run(Command::new(&self.kubectl)
                .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
                .args(["get", "node", &self.name, "-o", "jsonpath={.spec.podCIDR}"]))
            .unwrap_or_default();
            if !cidr.trim().is_empty() {
                return Ok(cidr.trim().to_string());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Node {} got no podCIDR (is the kubelet registered, the controller manager running with --allocate-node-cidrs?)",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn write_cni_config(&self) -> Result<()> {
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "workpool",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "wpbr0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.dir.join("cni-ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let tmp = self.dir.join("cni/.10-workpool.conflist");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&config)?)?;
        std::fs::rename(&tmp, self.dir.join("cni/10-workpool.conflist"))?;
        Ok(())
    }

    /// Lets the host reach pod IPs through the node. When another node on this machine
    /// (of another control plane) already routes the same CIDR, the host cannot reach
    /// this node's pods directly; [`Node::command_in_netns`] still can.
    fn route_pod_cidr(&self) -> Result<()> {
        let added = run_quiet(Command::new("ip").args([
            "route",
            "add",
            &self.pod_cidr,
            "via",
            &self.internal_ip().to_string(),
        ]));
        match added {
            Ok(()) => {
                std::fs::write(
                    self.dir.join("host-routes"),
                    format!("{} via {}\n", self.pod_cidr, self.internal_ip()),
                )?;
            }
            Err(e) => tracing::warn!("host route to pods of {}: {e:#}", self.name),
        }
        Ok(())
    }

    fn start_kube_proxy(&mut self, cp: &ControlPlane, kubeconfig: &Path) -> Result<()> {
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
clusterCIDR: {cluster_cidr}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = kubeconfig.display(),
            name = self.name,
            cluster_cidr = cp.options().cluster_cidr,
        );
        let path = self.dir.join("kube-proxy.yaml");
        std::fs::write(&path, config)?;
        let proxy = cp.bin_dir().join("kube-proxy");
        self.spawn(
            "kube-proxy",
            &proxy,
            &[format!("--config={}", path.display()), "--v=1".into()],
        )
    }

    fn write_teardown_script(&self) -> Result<()> {
        let slot = self.slot();
        let script = format!(
            r#"# Tears down the workpool test node in this directory (written by workpool_tests::node).
set +e
DIR='{dir}'
NS='{ns}'
CG='{cg}'
SOCK="$DIR/containerd.sock"
alive() {{ for p in $(cat "$DIR/pids" 2>/dev/null); do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }}
for p in $(cat "$DIR/pids" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
i=0; while alive && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
for p in $(cat "$DIR/pids" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
# Every container process (they are all in the node's cgroups), then the shims, which
# name this node's containerd socket on their command line.
for round in 1 2 3; do
  for f in $(find /sys/fs/cgroup/*/"$CG" -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f"); do kill -KILL "$p" 2>/dev/null; done
  done
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF -- "-address $SOCK"; then kill -KILL "${{d#/proc/}}" 2>/dev/null; fi
  done
  sleep 0.2
done
# Mounts under the node's directory, deepest first.
for round in 1 2 3; do
  awk -v d="$DIR/" 'index($5, d) == 1 {{ print $5 }}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
done
ip netns delete "$NS" 2>/dev/null
ip link delete '{hv}' 2>/dev/null
if [ -f "$DIR/host-routes" ]; then while read -r r; do ip route del $r 2>/dev/null; done < "$DIR/host-routes"; fi
for h in /sys/fs/cgroup/*/; do
  [ -d "$h$CG" ] && find "$h$CG" -depth -type d -exec rmdir {{}} \; 2>/dev/null
done
rm -rf "$DIR"
[ "$(cat '{record}' 2>/dev/null)" = "$DIR" ] && rm -f '{record}'
"#,
            dir = self.dir.display(),
            ns = slot.netns(),
            cg = slot.cgroup_root(),
            hv = slot.host_veth(),
            record = slot.record().display(),
        );
        std::fs::write(self.dir.join("teardown.sh"), script)?;
        Ok(())
    }

    /// A shell that runs the teardown script when its stdin closes: when this process
    /// exits in any way (also SIGKILL), the node is still cleaned up.
    fn start_watchdog(&mut self) -> Result<()> {
        let script = self.dir.join("teardown.sh");
        // The script lives in the directory it removes: run a copy from outside it.
        let copy =
            std::env::temp_dir().join(format!("workpool-node-teardown-{}.sh", self.slot().index));
        std::fs::copy(&script, &copy)?;
        let mut child = Command::new("sh")
            .args([
                "-c",
                "exec 9>>\"$1\"; flock -x 9; cat >/dev/null; sh \"$0\" >/dev/null 2>&1; rm -f \"$0\"",
            ])
            .arg(&copy)
            .arg(self.slot().teardown_lock())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the node's watchdog")?;
        self.watchdog_stdin = child.stdin.take();
        self.watchdog = Some(child);
        Ok(())
    }

    /// Stops the node and removes everything it created. Also done on drop.
    pub fn stop(&mut self) {
        if self.watchdog.is_none() {
            return;
        }
        self.provisioner.take();
        let _ = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args([
                "delete",
                "node",
                &self.name,
                "--wait=false",
                "--request-timeout=5s",
            ])
            .output();
        // Closing the watchdog's stdin runs the teardown; wait for it.
        self.watchdog_stdin.take();
        if let Some(mut watchdog) = self.watchdog.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = watchdog.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (_, child) in &mut self.children {
            let _ = child.try_wait();
        }
        self.slot.take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What is left on this machine of a stopped node whose directory was `dir` and network
/// namespace `netns` (e.g. `wpn3`), one line each; empty when nothing is: a process
/// naming the directory (containerd, its shims, the kubelet, kube-proxy), a process in the
/// node's cgroups (its containers), its cgroups, a mount under the directory, the network
/// namespace, the directory.
pub fn leftovers(dir: &Path, netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir_text = dir.display().to_string();
    let inside = format!("{dir_text}/");
    let cgroup = format!(
        "/workpool-node-{}",
        netns.strip_prefix("wpn").unwrap_or(netns)
    );
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let in_cgroup = cgroups.lines().any(|l| {
            l.split(':')
                .nth(2)
                .is_some_and(|p| p == cgroup || p.starts_with(&format!("{cgroup}/")))
        });
        if cmdline.contains(&inside) || in_cgroup {
            found.push(format!("process {pid}: {}", cmdline.trim()));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = hierarchy.path().join(cgroup.trim_start_matches('/'));
        if path.exists() {
            found.push(format!("cgroup {}", path.display()));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if let Some(point) = line.split(' ').nth(4)
            && (point == dir_text || point.starts_with(&inside))
        {
            found.push(format!("mount {point}"));
        }
    }
    if Path::new("/run/netns").join(netns).exists() {
        found.push(format!("network namespace {netns}"));
    }
    if dir.exists() {
        found.push(format!("directory {dir_text}"));
    }
    found
}

/// The image CoreDNS runs from (built by `scripts/coredns-bin.sh`).
pub const COREDNS_IMAGE: &str = "ghcr.io/workpool-dev/coredns:test";

/// The CoreDNS binary built by `scripts/coredns-bin.sh`, when it is there.
pub fn coredns_binary() -> Option<PathBuf> {
    let cache = std::env::var_os("WORKPOOL_K8S_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("workpool/k8s"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/workpool/k8s"))
        })?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("coredns-"))
        })
        .map(|p| p.join("bin/coredns"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The chart's appVersion (the default tag of its images).
fn chart_app_version() -> Option<String> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/workpool/Chart.yaml");
    let text = std::fs::read_to_string(chart).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("appVersion:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// Where this workspace's binaries are: the profile directory of the running executable
/// (`target/debug` for tests) and its sibling `release`.
struct BinaryDirs(Vec<PathBuf>);

impl BinaryDirs {
    fn locate() -> BinaryDirs {
        let mut dirs = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            let mut dir = exe.parent().map(Path::to_path_buf);
            if dir.as_ref().is_some_and(|d| d.ends_with("deps")) {
                dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
            }
            if let Some(d) = dir {
                if let Some(target) = d.parent() {
                    dirs.push(target.join("release"));
                }
                dirs.push(d);
            }
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        dirs.push(target.join("release"));
        dirs.push(target.join("debug"));
        BinaryDirs(dirs)
    }

    /// The newest build of `name` (a release build and a debug build: whichever was built
    /// last).
    fn find(&self, name: &str) -> Option<PathBuf> {
        self.0
            .iter()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    }
}
