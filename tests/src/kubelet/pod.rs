//! One task per pod: starts its containers, restarts them per policy, runs probes,
//! reports status, and terminates it gracefully.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, LifecycleHandler, Pod, PodIP, Probe, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use super::backoff::RestartBackoff;
use super::env::{ConfigSource, POD_IP, expand_all, resolve_env};
use super::images::build_argv;
use super::probe::{ProbeContext, Timing, run_handler, run_probe};
use super::process::{self, ExitInfo, SpawnSpec, signal_group, signal_process};
use super::status::{CState, CtrStatus, OwnedConditions, merge_conditions, pod_phase, qos_class};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CIdx {
    Init(usize),
    Main(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    fn label(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

pub(crate) enum PodMsg {
    Update(Box<Pod>),
    Removed(Box<Pod>),
    Exited {
        idx: CIdx,
        inst: u64,
        info: ExitInfo,
    },
    Probe {
        idx: CIdx,
        inst: u64,
        kind: ProbeKind,
        ok: bool,
    },
    Shutdown {
        grace_cap: Duration,
    },
}

/// Aborts the task when dropped (probe loops, stoppers, exit forwarders).
struct Task(JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ctr {
    spec: Container,
    st: CtrStatus,
    inst: u64,
    pid: Option<u32>,
    ran_since: Option<Instant>,
    backoff: RestartBackoff,
    /// When to (re)start this container; `None`: do not start it.
    next_start: Option<Instant>,
    last_error: Option<String>,
    /// Probe loops and stoppers of the current instance.
    tasks: Vec<Task>,
    /// Forwards the current instance's exit to the worker.
    exit_task: Option<Task>,
    ctx: Option<ProbeContext>,
    ever_started: bool,
    stopping: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TermReason {
    Deletion,
    Removed,
    Shutdown,
}

struct Term {
    reason: TermReason,
    grace: Duration,
    signalled: bool,
}

pub(crate) struct PodWorker {
    sh: Arc<Shared>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<PodMsg>,
    tx: mpsc::UnboundedSender<PodMsg>,
    inits: Vec<Ctr>,
    mains: Vec<Ctr>,
    restart_policy: String,
    conds: OwnedConditions,
    start_time: Time,
    terminal: Option<&'static str>,
    init_failed: bool,
    term: Option<Term>,
    removed: bool,
    /// The pod was already terminal when this kubelet first saw it: run nothing.
    adopted_terminal: bool,
    last_status: Option<serde_json::Value>,
    status_retry_at: Option<Instant>,
    done: bool,
}

struct ApiSource(Client);

impl ConfigSource for ApiSource {
    async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.0.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(s)) => {
                let mut out: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                // A real API server folds stringData into data; tolerate a double that does not.
                for (k, v) in s.string_data.unwrap_or_default() {
                    out.entry(k).or_insert_with(|| v.into_bytes());
                }
                Ok(Some(out))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("failed to get secret \"{name}\": {e}")),
        }
    }
    async fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.0.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(c)) => Ok(Some(c.data.unwrap_or_default())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("failed to get configmap \"{name}\": {e}")),
        }
    }
}

pub(crate) fn pod_key(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

fn secs(v: Option<i64>) -> Duration {
    Duration::from_secs(v.unwrap_or(30).max(0) as u64)
}

impl PodWorker {
    pub(crate) fn spawn(
        sh: Arc<Shared>,
        pod: Pod,
    ) -> (mpsc::UnboundedSender<PodMsg>, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ns, name, uid) = pod_key(&pod);
        let dir = sh.config.work_dir.join(format!("{ns}_{name}_{uid}"));
        let spec = pod.spec.clone().unwrap_or_default();
        let cfg = &sh.config;
        let old = pod.status.clone().unwrap_or_default();
        let mk = |c: &Container, old: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
            let mut st = CtrStatus::new(c);
            if let Some(prev) = old.and_then(|v| v.iter().find(|s| s.name == c.name)) {
                st.restart_count = prev.restart_count;
            }
            Ctr {
                spec: c.clone(),
                st,
                inst: 0,
                pid: None,
                ran_since: None,
                backoff: RestartBackoff::new(cfg.backoff_base, cfg.backoff_max, cfg.backoff_reset),
                next_start: Some(Instant::now()),
                last_error: None,
                tasks: Vec::new(),
                exit_task: None,
                ctx: None,
                ever_started: false,
                stopping: false,
            }
        };
        let inits = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| mk(c, old.init_container_statuses.as_ref()))
            .collect();
        let mains = spec
            .containers
            .iter()
            .map(|c| mk(c, old.container_statuses.as_ref()))
            .collect();
        let mut conds = OwnedConditions::default();
        conds.seed(old.conditions.as_deref().unwrap_or_default());
        let adopted_terminal = matches!(old.phase.as_deref(), Some("Succeeded" | "Failed"));
        let worker = PodWorker {
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            start_time: old.start_time.clone().unwrap_or(Time(Timestamp::now())),
            terminal: None,
            init_failed: false,
            sh,
            pod,
            ns,
            name,
            uid,
            dir,
            rx,
            tx: tx.clone(),
            inits,
            mains,
            conds,
            term: None,
            removed: false,
            adopted_terminal,
            last_status: None,
            status_retry_at: None,
            done: false,
        };
        let join = tokio::spawn(worker.run());
        (tx, join)
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.sh.client.clone(), &self.ns)
    }

    fn ctr(&mut self, idx: CIdx) -> Option<&mut Ctr> {
        match idx {
            CIdx::Init(i) => self.inits.get_mut(i),
            CIdx::Main(i) => self.mains.get_mut(i),
        }
    }

    fn all_ctrs(&mut self) -> impl Iterator<Item = &mut Ctr> {
        self.inits.iter_mut().chain(self.mains.iter_mut())
    }

    fn grace(&self) -> Duration {
        let spec = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        secs(self.pod.metadata.deletion_grace_period_seconds.or(spec))
    }

    async fn run(mut self) {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot create pod directory");
        }
        self.register_info();
        if self.adopted_terminal {
            self.terminal = self
                .pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .and_then(|p| match p {
                    "Succeeded" => Some("Succeeded"),
                    "Failed" => Some("Failed"),
                    _ => None,
                });
            for c in self.all_ctrs() {
                c.next_start = None;
            }
        }
        loop {
            self.step().await;
            if self.done {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                _ = self.sh.cancel.cancelled() => break,
                m = self.rx.recv() => match m {
                    Some(m) => self.handle(m).await,
                    None => {
                        // The kubelet is gone without a shutdown: kill everything now.
                        for c in self.all_ctrs() {
                            if let Some(pid) = c.pid {
                                signal_group(pid, Signal::SIGKILL);
                            }
                        }
                        break;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Dropping the containers aborts their tasks; exited processes were reaped.
        for c in self.all_ctrs() {
            if let Some(pid) = c.pid.take() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
        if let Ok(mut pods) = self.sh.pods.lock() {
            let key = (self.ns.clone(), self.name.clone());
            if pods.get(&key).is_some_and(|i| i.uid == self.uid) {
                pods.remove(&key);
            }
        }
    }

    fn register_info(&self) {
        if let Ok(mut pods) = self.sh.pods.lock() {
            let pids = self
                .inits
                .iter()
                .chain(self.mains.iter())
                .filter_map(|c| c.pid.map(|p| (c.spec.name.clone(), p)))
                .collect();
            pods.insert(
                (self.ns.clone(), self.name.clone()),
                super::PodInfo {
                    uid: self.uid.clone(),
                    dir: self.dir.clone(),
                    pids,
                },
            );
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut wake = far;
        if self.term.is_none() && self.terminal.is_none() {
            for c in self.inits.iter().chain(self.mains.iter()) {
                if let Some(t) = c.next_start {
                    wake = wake.min(t);
                }
            }
        }
        if let Some(t) = self.status_retry_at {
            wake = wake.min(t);
        }
        wake
    }

    async fn handle(&mut self, m: PodMsg) {
        match m {
            PodMsg::Update(p) => {
                if p.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    self.pod = *p;
                }
            }
            PodMsg::Removed(p) => {
                self.removed = true;
                if self.term.is_none() {
                    let grace = secs(p.metadata.deletion_grace_period_seconds.or_else(|| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    }))
                    .max(Duration::from_secs(2));
                    self.term = Some(Term {
                        reason: TermReason::Removed,
                        grace,
                        signalled: false,
                    });
                }
            }
            PodMsg::Shutdown { grace_cap } => {
                let grace = self.grace().min(grace_cap);
                match &mut self.term {
                    Some(t) => {
                        // Already terminating (deleted or removed): finish that, but do
                        // not wait past the shutdown cap.
                        if t.grace > grace_cap {
                            t.grace = grace_cap;
                            t.signalled = false;
                        }
                    }
                    None => {
                        self.term = Some(Term {
                            reason: TermReason::Shutdown,
                            grace,
                            signalled: false,
                        })
                    }
                }
            }
            PodMsg::Exited { idx, inst, info } => self.on_exit(idx, inst, info),
            PodMsg::Probe {
                idx,
                inst,
                kind,
                ok,
            } => self.on_probe(idx, inst, kind, ok),
        }
    }

    async fn step(&mut self) {
        if self.term.is_none() && self.pod.metadata.deletion_timestamp.is_some() {
            self.term = Some(Term {
                reason: TermReason::Deletion,
                grace: self.grace(),
                signalled: false,
            });
        }
        if self.term.is_some() {
            self.step_terminating().await;
            return;
        }
        if self.terminal.is_none() {
            self.start_due().await;
            let phase = self.phase();
            if matches!(phase, "Succeeded" | "Failed") {
                self.terminal = Some(phase);
            }
        }
        if !self.adopted_terminal {
            self.write_status(None).await;
        }
    }

    fn init_done(&self) -> bool {
        self.inits.iter().all(|c| c.st.state.exit_code() == Some(0))
    }

    fn phase(&self) -> &'static str {
        if let Some(p) = self.terminal {
            return p;
        }
        let mains: Vec<CtrStatus> = self.mains.iter().map(|c| c.st.clone()).collect();
        pod_phase(
            &self.restart_policy,
            !self.init_done(),
            self.init_failed,
            &mains,
        )
    }

    async fn start_due(&mut self) {
        let now = Instant::now();
        // Init containers one at a time, in order.
        for i in 0..self.inits.len() {
            let c = &self.inits[i];
            if c.st.state.exit_code() == Some(0) {
                continue;
            }
            if c.st.state.is_running() {
                return;
            }
            if c.next_start.is_some_and(|t| t <= now) {
                self.start(CIdx::Init(i)).await;
            } else if c.next_start.is_none() && c.st.state.exit_code().is_some() {
                // Failed and not restarted (restartPolicy Never): the pod fails.
                self.init_failed = true;
            }
            return;
        }
        for i in 0..self.mains.len() {
            if self.mains[i].next_start.is_some_and(|t| t <= now) {
                self.start(CIdx::Main(i)).await;
            }
        }
    }

    fn pod_label(&self) -> String {
        format!("{}_{}({})", self.name, self.ns, self.uid)
    }

    async fn start(&mut self, idx: CIdx) {
        let Some(spec) = self.ctr(idx).map(|c| c.spec.clone()) else {
            return;
        };
        if self.sh.cancel.is_cancelled() || self.sh.registry.is_closed() {
            return;
        }
        let retry = self.sh.config.config_retry;
        let env = resolve_env(
            &self.pod,
            &spec,
            &ApiSource(self.sh.client.clone()),
            &self.sh.node_alloc,
        )
        .await;
        let env = match env {
            Ok(e) => e,
            Err(msg) => {
                self.start_failed(idx, "CreateContainerConfigError", msg, retry);
                return;
            }
        };
        if !env.invalid_keys.is_empty() {
            self.sh.events.pod(
                &self.pod,
                Some(&spec.name),
                true,
                "InvalidEnvironmentVariableNames",
                format!(
                    "Keys [{}] from the EnvFrom were skipped since they are considered invalid environment variable names.",
                    env.invalid_keys.join(", ")
                ),
            );
        }
        let image = spec.image.clone().unwrap_or_default();
        let command = expand_all(spec.command.as_deref().unwrap_or_default(), &env);
        let args = expand_all(spec.args.as_deref().unwrap_or_default(), &env);
        let argv = match build_argv(&self.sh.config.images, &image, &command, &args) {
            Ok(a) => a,
            Err(e) => {
                self.start_failed(idx, e.reason, e.message, retry);
                return;
            }
        };
        let entry = self
            .sh
            .config
            .images
            .lookup(&image)
            .cloned()
            .unwrap_or_default();
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), host_path),
            ("HOSTNAME".into(), self.name.clone()),
            ("HOME".into(), self.dir.to_string_lossy().into_owned()),
        ];
        let mut put = |k: String, v: String| {
            if let Some(slot) = vars.iter_mut().find(|(x, _)| *x == k) {
                slot.1 = v;
            } else {
                vars.push((k, v));
            }
        };
        for (k, v) in entry
            .env
            .iter()
            .cloned()
            .chain(self.sh.config.extra_env.iter().cloned())
        {
            put(k, v);
        }
        for (k, v) in env.vars {
            put(k, v);
        }
        let cwd = match spec.working_dir.as_deref().filter(|w| !w.is_empty()) {
            Some(w) if std::path::Path::new(w).is_dir() => PathBuf::from(w),
            Some(w) => {
                // An in-image path that does not exist here: make it under the pod dir.
                let p = self.dir.join("root").join(w.trim_start_matches('/'));
                let _ = std::fs::create_dir_all(&p);
                p
            }
            None => entry
                .working_dir
                .clone()
                .unwrap_or_else(|| self.dir.clone()),
        };
        let log = self.dir.join(format!("{}.log", spec.name));
        let spawned = process::spawn(
            SpawnSpec {
                argv: argv.clone(),
                env: vars.clone(),
                cwd: cwd.clone(),
                log,
            },
            &self.sh.registry,
        );
        let image_id = format!("process://{}", argv[0]);
        let running = match spawned {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "failed to start container process: exec: \"{}\": {e}",
                    argv[0]
                );
                self.sh.events.pod(
                    &self.pod,
                    Some(&spec.name),
                    true,
                    "Failed",
                    format!("Error: {msg}"),
                );
                let now = Timestamp::now();
                let info = ExitInfo {
                    code: 128,
                    signal: None,
                    finished_at: now,
                };
                if let Some(c) = self.ctr(idx) {
                    c.inst += 1;
                    c.st.image_id = image_id;
                    if c.ever_started {
                        c.st.restart_count += 1;
                    }
                    c.ever_started = true;
                    c.ran_since = Some(Instant::now());
                    let inst = c.inst;
                    c.st.state = CState::Running { started_at: now };
                    self.on_exit_with(idx, inst, info, "StartError", Some(msg));
                }
                return;
            }
        };
        let pid = running.pid;
        let ctx = ProbeContext {
            ports: spec.ports.clone().unwrap_or_default(),
            env: vars,
            cwd,
            http: self.sh.http.clone(),
        };
        let tx = self.tx.clone();
        let inst = {
            let Some(c) = self.ctr(idx) else { return };
            c.inst += 1;
            if c.ever_started {
                c.st.restart_count += 1;
            }
            c.ever_started = true;
            c.pid = Some(pid);
            c.ran_since = Some(Instant::now());
            c.next_start = None;
            c.last_error = None;
            c.stopping = false;
            c.st.state = CState::Running {
                started_at: running.started_at,
            };
            c.st.container_id = Some(format!("process://{pid}"));
            c.st.image_id = image_id;
            let has_startup = spec.startup_probe.is_some();
            c.st.started = !has_startup;
            c.st.ready = !has_startup && spec.readiness_probe.is_none();
            c.ctx = Some(ctx.clone());
            let inst = c.inst;
            let exit = running.exit;
            c.exit_task = Some(Task(tokio::spawn(async move {
                if let Ok(info) = exit.await {
                    let _ = tx.send(PodMsg::Exited { idx, inst, info });
                }
            })));
            inst
        };
        let what = if matches!(idx, CIdx::Init(_)) {
            "init container"
        } else {
            "container"
        };
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %spec.name, pid, "started {what}");
        self.sh.events.pod(
            &self.pod,
            Some(&spec.name),
            false,
            "Created",
            format!("Created container: {}", spec.name),
        );
        self.sh.events.pod(
            &self.pod,
            Some(&spec.name),
            false,
            "Started",
            format!("Started container {}", spec.name),
        );
        self.register_info();
        if let Some(p) = spec.startup_probe.clone() {
            self.spawn_probe(idx, inst, ProbeKind::Startup, p, ctx);
        } else {
            self.spawn_regular_probes(idx, inst, &spec, ctx);
        }
    }

    fn spawn_regular_probes(&mut self, idx: CIdx, inst: u64, spec: &Container, ctx: ProbeContext) {
        if matches!(idx, CIdx::Init(_)) {
            return;
        }
        if let Some(p) = spec.readiness_probe.clone() {
            self.spawn_probe(idx, inst, ProbeKind::Readiness, p, ctx.clone());
        }
        if let Some(p) = spec.liveness_probe.clone() {
            self.spawn_probe(idx, inst, ProbeKind::Liveness, p, ctx);
        }
    }

    fn spawn_probe(
        &mut self,
        idx: CIdx,
        inst: u64,
        kind: ProbeKind,
        probe: Probe,
        ctx: ProbeContext,
    ) {
        let tx = self.tx.clone();
        let events = self.sh.events.clone();
        let pod = self.pod.clone();
        let Some(c) = self.ctr(idx) else { return };
        let cname = c.spec.name.clone();
        let task = tokio::spawn(async move {
            let t = Timing::of(&probe);
            tokio::time::sleep(t.initial_delay).await;
            let (mut succ, mut fail) = (0u32, 0u32);
            let mut reported: Option<bool> = None;
            loop {
                let res = run_probe(&probe, &ctx).await;
                match res {
                    Ok(()) => {
                        fail = 0;
                        succ = succ.saturating_add(1);
                        let threshold = if kind == ProbeKind::Readiness {
                            t.success_threshold
                        } else {
                            1
                        };
                        if succ >= threshold && reported != Some(true) {
                            reported = Some(true);
                            if kind != ProbeKind::Liveness {
                                let _ = tx.send(PodMsg::Probe {
                                    idx,
                                    inst,
                                    kind,
                                    ok: true,
                                });
                            }
                            if kind == ProbeKind::Startup {
                                return;
                            }
                        }
                    }
                    Err(msg) => {
                        succ = 0;
                        fail = fail.saturating_add(1);
                        events.pod(
                            &pod,
                            Some(&cname),
                            true,
                            "Unhealthy",
                            format!("{} probe failed: {msg}", kind.label()),
                        );
                        if fail >= t.failure_threshold && reported != Some(false) {
                            reported = Some(false);
                            let _ = tx.send(PodMsg::Probe {
                                idx,
                                inst,
                                kind,
                                ok: false,
                            });
                            if kind != ProbeKind::Readiness {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(t.period).await;
            }
        });
        c.tasks.push(Task(task));
    }

    fn on_probe(&mut self, idx: CIdx, inst: u64, kind: ProbeKind, ok: bool) {
        let pod = self.pod.clone();
        let term_grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        let Some(c) = self.ctr(idx) else { return };
        if c.inst != inst || !c.st.state.is_running() {
            return;
        }
        match (kind, ok) {
            (ProbeKind::Readiness, ok) => c.st.ready = ok && c.st.started,
            (ProbeKind::Startup, true) => {
                c.st.started = true;
                c.st.ready = c.spec.readiness_probe.is_none();
                let spec = c.spec.clone();
                if let Some(ctx) = c.ctx.clone() {
                    self.spawn_regular_probes(idx, inst, &spec, ctx);
                }
            }
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                let probe = if kind == ProbeKind::Liveness {
                    &c.spec.liveness_probe
                } else {
                    &c.spec.startup_probe
                };
                let grace = secs(
                    probe
                        .as_ref()
                        .and_then(|p| p.termination_grace_period_seconds)
                        .or(term_grace),
                );
                let name = c.spec.name.clone();
                self.sh.events.pod(
                    &pod,
                    Some(&name),
                    false,
                    "Killing",
                    format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.label().to_lowercase()
                    ),
                );
                self.stop_container(idx, grace);
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    /// preStop, SIGTERM to the main process, SIGKILL to the group after `grace`.
    fn stop_container(&mut self, idx: CIdx, grace: Duration) {
        let to_group = self.sh.config.sigterm_process_group;
        let events = self.sh.events.clone();
        let pod = self.pod.clone();
        let Some(c) = self.ctr(idx) else { return };
        let Some(pid) = c.pid else { return };
        if c.stopping {
            return;
        }
        c.stopping = true;
        let pre_stop: Option<LifecycleHandler> =
            c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone());
        let ctx = c.ctx.clone();
        let name = c.spec.name.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut deadline = start + grace;
            if let (Some(h), Some(ctx)) = (pre_stop, ctx) {
                if let Err(msg) = run_handler(&h, &ctx, grace).await {
                    events.pod(
                        &pod,
                        Some(&name),
                        true,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {msg}"),
                    );
                }
                if Instant::now() >= deadline {
                    // The kubelet grants a one-off 2 s extension when preStop used it all.
                    deadline = Instant::now() + Duration::from_secs(2);
                }
            }
            if to_group {
                signal_group(pid, Signal::SIGTERM);
            } else {
                signal_process(pid, Signal::SIGTERM);
            }
            tokio::time::sleep_until(deadline).await;
            signal_group(pid, Signal::SIGKILL);
        });
        c.tasks.push(Task(task));
    }

    fn start_failed(&mut self, idx: CIdx, reason: &str, message: String, retry: Duration) {
        let pod = self.pod.clone();
        let events = self.sh.events.clone();
        let Some(c) = self.ctr(idx) else { return };
        if c.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")), container = %c.spec.name, reason, %message, "container not started");
            events.pod(
                &pod,
                Some(&c.spec.name),
                true,
                "Failed",
                format!("Error: {message}"),
            );
            c.last_error = Some(message.clone());
        }
        c.st.state = CState::waiting(reason, Some(message));
        c.st.ready = false;
        c.next_start = Some(Instant::now() + retry);
    }

    fn on_exit(&mut self, idx: CIdx, inst: u64, info: ExitInfo) {
        let reason = if info.code == 0 { "Completed" } else { "Error" };
        let message = self.ctr(idx).and_then(|c| {
            (info.code != 0
                && c.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
            .then(|| c.spec.name.clone())
        });
        let message = message.and_then(|name| log_tail(&self.dir.join(format!("{name}.log"))));
        self.on_exit_with(idx, inst, info, reason, message);
    }

    fn on_exit_with(
        &mut self,
        idx: CIdx,
        inst: u64,
        info: ExitInfo,
        reason: &str,
        message: Option<String>,
    ) {
        let terminating = self.term.is_some();
        let policy = self.restart_policy.clone();
        let label = self.pod_label();
        let pod = self.pod.clone();
        let events = self.sh.events.clone();
        let Some(c) = self.ctr(idx) else { return };
        if c.inst != inst {
            return;
        }
        c.tasks.clear();
        c.exit_task = None;
        c.pid = None;
        c.stopping = false;
        c.st.ready = false;
        c.st.started = false;
        let started_at = match &c.st.state {
            CState::Running { started_at } => Some(*started_at),
            _ => None,
        };
        let ran_for = c.ran_since.take().map(|t| t.elapsed()).unwrap_or_default();
        let terminated = CState::Terminated {
            exit_code: info.code,
            signal: info.signal,
            reason: reason.to_string(),
            message,
            started_at,
            finished_at: info.finished_at,
            container_id: c.st.container_id.clone(),
        };
        let failed = info.code != 0;
        let restart = !terminating
            && match idx {
                CIdx::Init(_) => failed && policy != "Never",
                CIdx::Main(_) => match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => failed,
                    _ => true,
                },
            };
        tracing::info!(container = %c.spec.name, pod = %label, code = info.code, restart, "container exited");
        if restart {
            let delay = c.backoff.next_delay(ran_for);
            c.st.last_state = Some(terminated);
            c.st.state = CState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {} restarting failed container={} pod={label}",
                    go_duration(delay),
                    c.spec.name
                )),
            );
            c.next_start = Some(Instant::now() + delay);
            events.pod(
                &pod,
                Some(&c.spec.name),
                true,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {label}",
                    c.spec.name
                ),
            );
        } else {
            c.st.state = terminated;
            c.next_start = None;
        }
        self.register_info();
    }

    async fn step_terminating(&mut self) {
        let Some(term) = self.term.as_mut() else {
            return;
        };
        let grace = term.grace;
        let reason = term.reason;
        if !term.signalled {
            term.signalled = true;
            let mut idxs = Vec::new();
            for (i, c) in self.inits.iter_mut().enumerate() {
                c.next_start = None;
                if c.pid.is_some() {
                    idxs.push(CIdx::Init(i));
                }
            }
            for (i, c) in self.mains.iter_mut().enumerate() {
                c.next_start = None;
                if c.pid.is_some() {
                    idxs.push(CIdx::Main(i));
                }
            }
            for idx in idxs {
                if let Some(c) = self.ctr(idx) {
                    // A shutdown during a deletion starts a new countdown with the capped
                    // grace; the earlier stopper keeps its own (later) deadline.
                    c.stopping = false;
                }
                let name = self
                    .ctr(idx)
                    .map(|c| c.spec.name.clone())
                    .unwrap_or_default();
                self.sh.events.pod(
                    &self.pod,
                    Some(&name),
                    false,
                    "Killing",
                    format!("Stopping container {name}"),
                );
                self.stop_container(idx, grace);
            }
        }
        if self
            .inits
            .iter()
            .chain(self.mains.iter())
            .any(|c| c.pid.is_some())
        {
            // Write running → terminating progress (e.g. terminated states of some).
            if reason != TermReason::Removed {
                self.write_status(None).await;
            }
            return;
        }
        // Everything has stopped.
        let newly_terminal = self.terminal.is_none();
        if newly_terminal {
            let all_ok = !self.mains.is_empty()
                && self.mains.iter().all(|c| c.st.state.exit_code() == Some(0));
            self.terminal = Some(if reason == TermReason::Shutdown || !all_ok {
                "Failed"
            } else {
                "Succeeded"
            });
        }
        match reason {
            TermReason::Removed => {
                self.done = true;
            }
            TermReason::Shutdown => {
                // A pod that had already completed keeps its status as it was.
                if newly_terminal && !self.adopted_terminal && !self.removed {
                    let budget = Instant::now() + Duration::from_secs(3);
                    self.write_status_until(
                        Some((
                            "Terminated",
                            "Pod was terminated in response to imminent node shutdown.",
                        )),
                        budget,
                    )
                    .await;
                }
                self.done = true;
            }
            TermReason::Deletion => {
                if !self.adopted_terminal {
                    let budget = Instant::now() + Duration::from_secs(10);
                    self.write_status_until(None, budget).await;
                }
                if self.removed {
                    self.done = true;
                    return;
                }
                self.done = self.delete_pod().await;
                if !self.done {
                    self.status_retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }

    /// Delete the pod object now that its containers are gone (grace 0, uid precondition).
    async fn delete_pod(&mut self) -> bool {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 0..8u32 {
            match self.api().delete(&self.name, &dp).await {
                Ok(_) => return true,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return true,
                Err(e) => {
                    tracing::debug!(error = %e, pod = %self.name, "pod delete failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
            }
        }
        false
    }

    fn build_status(&mut self, reason: Option<(&str, &str)>) -> serde_json::Value {
        let now = Timestamp::now();
        let phase = self.phase();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_done = self.init_done();
        let completed = matches!(phase, "Succeeded" | "Failed");
        let unready: Vec<String> = self
            .mains
            .iter()
            .filter(|c| !c.st.ready)
            .map(|c| c.spec.name.clone())
            .collect();
        let incomplete: Vec<String> = self
            .inits
            .iter()
            .filter(|c| c.st.state.exit_code() != Some(0))
            .map(|c| c.spec.name.clone())
            .collect();
        let existing = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut ours = Vec::new();
        if !existing.iter().any(|c| c.type_ == "PodScheduled") {
            ours.push(self.conds.condition("PodScheduled", true, None, None, now));
        }
        ours.push(
            self.conds
                .condition("PodReadyToStartContainers", !completed, None, None, now),
        );
        ours.push(if init_done {
            self.conds.condition("Initialized", true, None, None, now)
        } else {
            self.conds.condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )),
                now,
            )
        });
        let containers_ready = unready.is_empty() && !completed;
        let (cr_reason, cr_msg) = if containers_ready {
            (None, None)
        } else if completed {
            (Some("PodCompleted"), None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        ours.push(self.conds.condition(
            "ContainersReady",
            containers_ready,
            cr_reason,
            cr_msg.clone(),
            now,
        ));
        // Readiness gates: conditions others set on the pod.
        let mut gate_msg = None;
        for g in spec.readiness_gates.iter().flatten() {
            match existing.iter().find(|c| c.type_ == g.condition_type) {
                Some(c) if c.status == "True" => {}
                Some(c) => {
                    gate_msg = Some(format!(
                        "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                        g.condition_type, c.status
                    ));
                }
                None => {
                    gate_msg = Some(format!(
                        "corresponding condition of pod readiness gate \"{}\" does not exist.",
                        g.condition_type
                    ));
                }
            }
        }
        ours.push(match (containers_ready, gate_msg) {
            (true, None) => self.conds.condition("Ready", true, None, None, now),
            (true, Some(m)) => {
                self.conds
                    .condition("Ready", false, Some("ReadinessGatesNotReady"), Some(m), now)
            }
            (false, _) => self.conds.condition("Ready", false, cr_reason, cr_msg, now),
        });
        let conditions = merge_conditions(&existing, ours);
        let ip = vec![PodIP { ip: POD_IP.into() }];
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": POD_IP,
            "hostIPs": ip,
            "podIP": POD_IP,
            "podIPs": ip,
            "startTime": self.start_time,
            "qosClass": qos_class(&spec),
            "containerStatuses": self.mains.iter().map(|c| c.st.to_k8s()).collect::<Vec<_>>(),
        });
        if !self.inits.is_empty() {
            status["initContainerStatuses"] =
                json!(self.inits.iter().map(|c| c.st.to_k8s()).collect::<Vec<_>>());
        }
        if let Some((r, m)) = reason {
            status["reason"] = json!(r);
            status["message"] = json!(m);
        }
        status
    }

    async fn write_status_until(&mut self, reason: Option<(&str, &str)>, until: Instant) {
        loop {
            if self.write_status(reason).await || Instant::now() >= until || self.removed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Merge-patch `status` with the latest resourceVersion as a precondition; on 409,
    /// re-read and retry. Returns true when the API has our status.
    async fn write_status(&mut self, reason: Option<(&str, &str)>) -> bool {
        if self.removed {
            return true;
        }
        if let Some(t) = self.status_retry_at
            && t > Instant::now()
        {
            return false;
        }
        self.status_retry_at = None;
        let api = self.api();
        for attempt in 0..6u32 {
            let status = self.build_status(reason);
            if self.last_status.as_ref() == Some(&status) {
                return true;
            }
            let mut body = json!({ "status": status });
            if let Some(rv) = &self.pod.metadata.resource_version {
                body["metadata"] = json!({ "resourceVersion": rv });
            }
            match api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(p) => {
                    if p.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                        self.pod = p;
                    }
                    self.last_status = Some(status);
                    return true;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.removed = true;
                    return true;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&self.name).await {
                    Ok(Some(p)) if p.metadata.uid.as_deref() == Some(self.uid.as_str()) => {
                        self.pod = p;
                    }
                    Ok(_) => {
                        self.removed = true;
                        return true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "re-read after conflict failed");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, pod = %self.name, attempt, "status write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        self.status_retry_at = Some(Instant::now() + Duration::from_millis(500));
        false
    }
}

/// The end of a container log, for `FallbackToLogsOnError` (at most 80 lines / 2 KiB).
fn log_tail(path: &std::path::Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let start = data.len().saturating_sub(2048);
    let text = String::from_utf8_lossy(&data[start..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len().saturating_sub(80);
    let out = lines[keep..].join("\n");
    (!out.is_empty()).then_some(out)
}

/// A duration as Go prints it (`500ms`, `10s`, `1m20s`, `5m0s`), as in kubelet messages.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let whole_min = (secs / 60.0).floor() as u64;
    let rest = secs - (whole_min * 60) as f64;
    let rest = if rest.fract() == 0.0 {
        format!("{}s", rest as u64)
    } else {
        format!("{rest}s")
    };
    if whole_min == 0 {
        rest
    } else {
        format!("{whole_min}m{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.log");
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).expect("write");
        let tail = log_tail(&p).expect("tail");
        assert!(tail.ends_with("line 199"));
        assert!(tail.lines().count() <= 80);
        assert!(log_tail(&dir.path().join("absent")).is_none());
    }
}
