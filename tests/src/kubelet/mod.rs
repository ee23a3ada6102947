//! A process kubelet (and a trivial scheduler) for the test control plane.
//!
//! It is an ordinary API client (kube-rs) that uses only documented API behaviour, so
//! it also works against a real API server. It registers a Node (and renews its Lease
//! in `kube-node-lease`), watches the pods bound to it
//! (`fieldSelector=spec.nodeName=<node>`), runs their containers as local processes,
//! reports pod status through `pods/{name}/status`, and deletes gracefully terminated
//! pods with `gracePeriodSeconds=0` and a uid precondition.
//!
//! Modelled:
//! - Scheduling (optional): pods with no `spec.nodeName`, the default scheduler and a
//!   matching `nodeSelector` are bound via `POST pods/{name}/binding`; event `Scheduled`.
//! - Images: [`ImageMap`] maps an image repository (tag/digest ignored) to a local
//!   entrypoint (+cmd/env/workdir). `command` overrides the entrypoint, `args` the cmd;
//!   an unmapped image runs `command[0]` from `PATH`, and without `command` the container
//!   waits with reason `ErrImageNeverPull` (retried).
//! - Env: `value` with `$(VAR)` expansion (`$$` escape), `fieldRef` (name, namespace,
//!   uid, labels['k'], annotations['k'], spec.nodeName, spec.serviceAccountName,
//!   status.podIP/hostIP = 127.0.0.1), `resourceFieldRef` (limits default to node
//!   allocatable), `secretKeyRef`/`configMapKeyRef` (`optional`), `envFrom` with prefix.
//!   A missing required source: waiting `CreateContainerConfigError`, retried. `$(VAR)`
//!   in `command`/`args`. `workingDir` (created under the pod dir when absent on the
//!   host). The process environment is clean: PATH, HOSTNAME, HOME + the above.
//! - Init containers in order (each must exit 0), then all containers. Each container is
//!   a process in its own process group; stdout+stderr are appended to
//!   `work_dir/<ns>_<pod>_<uid>/<container>.log`.
//! - restartPolicy Always/OnFailure/Never, CrashLoopBackOff (base, doubling, cap, reset
//!   after a long run), phases Pending/Running/Succeeded/Failed as the kubelet computes
//!   them, exit codes 128+signal, reasons Completed/Error/StartError, `lastState`,
//!   `restartCount`, `FallbackToLogsOnError` messages.
//! - Probes: readiness, liveness and startup with httpGet (named ports, headers),
//!   tcpSocket and exec, initialDelay/period/timeout/success/failure thresholds;
//!   `Unhealthy` events; liveness/startup failure kills and restarts per policy.
//! - Status: phase, conditions PodScheduled/PodReadyToStartContainers/Initialized/
//!   ContainersReady/Ready (transition times move only on flips; readiness gates;
//!   others' conditions kept), hostIP(s)/podIP(s), startTime, qosClass, container and
//!   init container statuses. Merge patches carry the resourceVersion; 409 → re-read.
//! - Termination: preStop (exec, httpGet, sleep), SIGTERM to the main process (or the
//!   group, [`KubeletConfig::sigterm_process_group`]), SIGKILL to the whole group after
//!   the grace period; terminal phase written, then the pod object deleted. Shutdown of
//!   the kubelet acts like a graceful node shutdown (pods `Failed`, reason `Terminated`).
//! - Events (core/v1): Scheduled, Created, Started, Killing, BackOff, Unhealthy, Failed,
//!   FailedPreStopHook, InvalidEnvironmentVariableNames.
//!
//! Not modelled: volumes and volume mounts, image pulls (`Pulled`), resource limits
//! (no cgroups, no OOMKilled), postStart hooks, sidecar (restartable init) containers,
//! ephemeral containers, `activeDeadlineSeconds`, HTTPS and gRPC probes,
//! `terminationMessagePath`, service environment variables, `pods/log`/exec/attach,
//! network isolation (every pod is 127.0.0.1 and shares the host's ports), affinity,
//! taints and tolerations in scheduling.

pub mod backoff;
pub mod env;
pub mod events;
pub mod images;
pub mod node;
pub(crate) mod pod;
pub mod probe;
pub mod process;
pub mod scheduler;
pub mod status;
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use images::{ImageEntry, ImageMap};

use pod::{PodMsg, PodWorker};
use process::ProcessRegistry;

/// How a [`Kubelet`] behaves. Build with [`KubeletConfig::new`] and adjust fields, or a
/// struct literal ending in `..KubeletConfig::new(...)`.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The Node this kubelet registers and runs pods for, e.g. `node-1`.
    pub node_name: String,
    /// Image → local program mapping.
    pub images: ImageMap,
    /// Per-pod directories `<ns>_<pod>_<uid>/` holding `<container>.log` files.
    pub work_dir: PathBuf,
    /// Also bind unscheduled pods (default scheduler) to this node.
    pub run_scheduler: bool,
    /// CrashLoopBackOff base delay (the kubelet's is 10 s); doubles per restart.
    pub backoff_base: Duration,
    /// CrashLoopBackOff cap (300 s in the kubelet).
    pub backoff_max: Duration,
    /// A container that ran this long resets its back-off (10 min in the kubelet).
    pub backoff_reset: Duration,
    /// Retry interval for `CreateContainerConfigError` / unmapped images.
    pub config_retry: Duration,
    /// Node status / Lease renewal interval (10 s in the kubelet).
    pub node_status_interval: Duration,
    /// Upper bound on each pod's grace period when the kubelet shuts down.
    pub shutdown_grace_period: Duration,
    /// Extra labels on the Node.
    pub node_labels: BTreeMap<String, String>,
    /// Extra environment for every container (lowest precedence after the image env).
    pub extra_env: Vec<(String, String)>,
    /// Send the stop signal (SIGTERM) to the container's whole process group instead of
    /// only its main process. Off by default: like a container runtime, only the main
    /// process gets SIGTERM; the whole group gets SIGKILL when the grace period ends or
    /// when the main process exits.
    pub sigterm_process_group: bool,
    /// Node capacity/allocatable.
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
    pub max_pods: u32,
}

impl KubeletConfig {
    pub fn new(
        node_name: impl Into<String>,
        images: ImageMap,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        KubeletConfig {
            node_name: node_name.into(),
            images,
            work_dir: work_dir.into(),
            run_scheduler: false,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            config_retry: Duration::from_secs(2),
            node_status_interval: Duration::from_secs(10),
            shutdown_grace_period: Duration::from_secs(30),
            node_labels: BTreeMap::new(),
            extra_env: Vec::new(),
            sigterm_process_group: false,
            node_cpu_millis: 4000,
            node_memory_bytes: 8 << 30,
            max_pods: 110,
        }
    }

    pub fn with_scheduler(mut self, on: bool) -> Self {
        self.run_scheduler = on;
        self
    }

    pub fn with_backoff_base(mut self, base: Duration) -> Self {
        self.backoff_base = base;
        self
    }
}

/// What the kubelet knows about one running pod (for the handle's queries).
#[derive(Clone, Debug)]
pub(crate) struct PodInfo {
    pub uid: String,
    pub dir: PathBuf,
    pub pids: BTreeMap<String, u32>,
}

pub(crate) struct Shared {
    pub client: Client,
    pub config: Arc<KubeletConfig>,
    pub events: events::EventSink,
    pub registry: ProcessRegistry,
    pub pods: Mutex<HashMap<(String, String), PodInfo>>,
    pub http: reqwest::Client,
    pub node_alloc: env::NodeAllocatable,
    /// Cancelled when the handle is dropped without shutdown: workers kill and stop.
    pub cancel: CancellationToken,
}

pub struct Kubelet;

/// A running kubelet. Dropping it without [`KubeletHandle::shutdown`] SIGKILLs every
/// container process at once.
pub struct KubeletHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    shutdown_tx: Option<tokio::sync::oneshot::Sender<()>>,
    main: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Kubelet {
    /// Register the node and start running pods bound to it.
    pub async fn start(client: Client, config: KubeletConfig) -> anyhow::Result<KubeletHandle> {
        if config.node_name.is_empty() {
            anyhow::bail!("KubeletConfig.node_name is empty");
        }
        std::fs::create_dir_all(&config.work_dir).map_err(|e| {
            anyhow::anyhow!("cannot create work_dir {}: {e}", config.work_dir.display())
        })?;
        let config = Arc::new(config);
        let node_uid = node::register(&client, &config).await?;
        let (events, events_task) = events::start(client.clone(), config.node_name.clone());
        let shared = Arc::new(Shared {
            client: client.clone(),
            node_alloc: env::NodeAllocatable {
                cpu_millis: config.node_cpu_millis,
                memory_bytes: config.node_memory_bytes,
                ephemeral_storage_bytes: 20 << 30,
            },
            config: config.clone(),
            events: events.clone(),
            registry: ProcessRegistry::default(),
            pods: Mutex::new(HashMap::new()),
            http: probe::http_client(),
            cancel: CancellationToken::new(),
        });
        let node_ref = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(config.node_name.clone()),
            uid: Some(config.node_name.clone()),
            ..Default::default()
        };
        events.send(events::EventReq {
            object: node_ref,
            warning: false,
            reason: "Starting".into(),
            message: "Starting process kubelet.".into(),
            component: "kubelet",
        });
        let cancel = shared.cancel.clone();
        let mut background = vec![
            events_task,
            tokio::spawn(node::heartbeat(
                client.clone(),
                config.clone(),
                node_uid,
                cancel.clone(),
            )),
        ];
        if config.run_scheduler {
            let mut labels: BTreeMap<String, String> = [
                (
                    "kubernetes.io/hostname".to_string(),
                    config.node_name.clone(),
                ),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ]
            .into();
            labels.extend(config.node_labels.clone());
            background.push(tokio::spawn(scheduler::run(
                client.clone(),
                config.clone(),
                events,
                labels,
                cancel.clone(),
            )));
        }
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let main = tokio::spawn(run_pods(shared.clone(), shutdown_rx, cancel.clone()));
        Ok(KubeletHandle {
            shared,
            cancel,
            shutdown_tx: Some(shutdown_tx),
            main: Some(main),
            background,
        })
    }
}

impl KubeletHandle {
    /// Fault injection: SIGKILL the container's process (and its process group) now.
    pub fn kill_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<()> {
        let pid = self.pid(namespace, pod, container).ok_or_else(|| {
            anyhow::anyhow!("no running container {container} in pod {namespace}/{pod}")
        })?;
        if process::signal_group(pid, Signal::SIGKILL) {
            Ok(())
        } else {
            anyhow::bail!(
                "container {container} in pod {namespace}/{pod} (pid {pid}) is already gone"
            )
        }
    }

    /// Running containers of a pod: container name → pid.
    pub fn pids(&self, namespace: &str, pod: &str) -> Vec<(String, u32)> {
        self.shared
            .pods
            .lock()
            .ok()
            .and_then(|p| p.get(&(namespace.to_string(), pod.to_string())).cloned())
            .map(|i| i.pids.into_iter().collect())
            .unwrap_or_default()
    }

    fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.pids(namespace, pod)
            .into_iter()
            .find(|(c, _)| c == container)
            .map(|(_, p)| p)
    }

    /// The pod's directory (`work_dir/<ns>_<pod>_<uid>`) while this kubelet runs it.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        self.shared.pods.lock().ok().and_then(|p| {
            p.get(&(namespace.to_string(), pod.to_string()))
                .map(|i| i.dir.clone())
        })
    }

    /// Where a container's stdout/stderr go (appended across restarts).
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        self.pod_dir(namespace, pod)
            .map(|d| d.join(format!("{container}.log")))
    }

    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// Like a graceful node shutdown: every pod's containers get preStop + SIGTERM, up to
    /// `min(grace period, shutdown_grace_period)`, then SIGKILL; pods are reported
    /// `Failed` with reason `Terminated` (not deleted). Then everything stops.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(main) = self.main.take() {
            let limit = self.shared.config.shutdown_grace_period + Duration::from_secs(10);
            if tokio::time::timeout(limit, main).await.is_err() {
                tracing::warn!("kubelet shutdown timed out; killing remaining processes");
            }
        }
        self.shared.registry.close_and_kill_all();
        self.cancel.cancel();
        for t in self.background.drain(..) {
            t.abort();
        }
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.registry.close_and_kill_all();
        if let Some(m) = self.main.take() {
            m.abort();
        }
        for t in self.background.drain(..) {
            t.abort();
        }
    }
}

struct WorkerRef {
    tx: mpsc::UnboundedSender<PodMsg>,
    join: JoinHandle<()>,
    last: Pod,
}

async fn run_pods(
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    cancel: CancellationToken,
) {
    let node = shared.config.node_name.clone();
    let api: Api<Pod> = Api::all(shared.client.clone());
    let stream = watcher(
        api,
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut workers: HashMap<String, WorkerRef> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    loop {
        let ev = tokio::select! {
            _ = &mut shutdown => break,
            _ = cancel.cancelled() => return,
            _ = reap.tick() => {
                workers.retain(|_, w| !w.join.is_finished());
                continue;
            }
            ev = stream.next() => ev,
        };
        let ev = match ev {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "pod watch error (retrying with back-off)");
                continue;
            }
            None => break,
        };
        match ev {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                // Filter here too, in case a server ignores the field selector.
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node.as_str()) {
                    continue;
                }
                let Some(uid) = p.metadata.uid.clone() else {
                    continue;
                };
                seen.insert(uid.clone());
                match workers.get_mut(&uid) {
                    Some(w) if !w.join.is_finished() => {
                        w.last = p.clone();
                        let _ = w.tx.send(PodMsg::Update(Box::new(p)));
                    }
                    _ => {
                        let (tx, join) = PodWorker::spawn(shared.clone(), p.clone());
                        workers.insert(uid, WorkerRef { tx, join, last: p });
                    }
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(w) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = w.tx.send(PodMsg::Removed(Box::new(p)));
                }
            }
            watcher::Event::InitDone => {
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.tx.send(PodMsg::Removed(Box::new(w.last.clone())));
                    }
                }
            }
        }
    }
    // Shutdown: terminate every pod gracefully (capped), then return.
    let grace_cap = shared.config.shutdown_grace_period;
    for w in workers.values() {
        let _ = w.tx.send(PodMsg::Shutdown { grace_cap });
    }
    for (_, w) in workers.drain() {
        let _ = w.join.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_static<T: Send + Sync + 'static>() {}

    #[test]
    fn handle_can_be_attached_to_a_cluster() {
        // TestCluster::attach needs Send + 'static.
        send_static::<KubeletHandle>();
        send_static::<KubeletConfig>();
    }

    #[test]
    fn defaults_match_the_kubelet() {
        let c = KubeletConfig::new("n", ImageMap::new(), "/tmp/x");
        assert_eq!(c.backoff_base, Duration::from_secs(10));
        assert_eq!(c.backoff_max, Duration::from_secs(300));
        assert_eq!(c.backoff_reset, Duration::from_secs(600));
        assert!(!c.run_scheduler);
        assert!(!c.sigterm_process_group);
    }
}
