//! The process kubelet against the API server double: pods run as local processes and
//! their lifecycle is reported through the real HTTP API.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_tests::kubelet::testing::{
    condition, container_status, free_port, is_ready, phase, wait_pod, wait_pod_gone,
    waiting_reason,
};
use workpool_tests::kubelet::{ImageMap, Kubelet, KubeletConfig, KubeletHandle};

const T: Duration = Duration::from_secs(30);

struct Env {
    cluster: TestCluster,
    kubelet: Option<KubeletHandle>,
    pods: Api<Pod>,
    client: kube::Client,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(|c| c).await
    }

    async fn start_with(f: impl FnOnce(KubeletConfig) -> KubeletConfig) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        // Always the API double: these suites test our process kubelet, which a real
        // cluster replaces with its own (WORKPOOL_E2E_KUBECONFIG is ignored here).
        let cluster = TestCluster::start_double(ClusterOptions::default())
            .await
            .expect("test cluster starts");
        let client = cluster.client();
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = KubeletConfig::new("node-1", ImageMap::new(), dir.path().join("kubelet"))
            .with_scheduler(true)
            .with_backoff_base(Duration::from_millis(500));
        let kubelet = Kubelet::start(client.clone(), f(cfg))
            .await
            .expect("kubelet starts");
        Env {
            cluster,
            kubelet: Some(kubelet),
            pods: Api::namespaced(client.clone(), "default"),
            client,
            dir,
        }
    }

    fn kubelet(&self) -> &KubeletHandle {
        self.kubelet.as_ref().expect("kubelet running")
    }

    async fn create(&self, pod: serde_json::Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).expect("valid pod json");
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod created")
    }

    async fn stop(mut self) {
        self.stop_kubelet().await;
    }

    async fn stop_kubelet(&mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
    }
}

fn sh_pod(name: &str, script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["/bin/sh", "-c", script]}]
        }
    })
}

async fn read_eventually(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never written", path.display());
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_pod_is_scheduled_runs_and_becomes_ready() {
    let env = Env::start().await;
    env.create(sh_pod("hello", "echo hello from $HOSTNAME; exec sleep 600"))
        .await;
    let pod = wait_pod(&env.pods, "hello", T, "Running and Ready", |p| {
        phase(p) == "Running" && is_ready(p)
    })
    .await
    .expect("pod runs");

    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("node-1"));
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, c).as_deref(), Some("True"), "condition {c}");
    }
    let cs = container_status(&pod, "main").expect("container status");
    assert!(cs.ready);
    assert_eq!(cs.started, Some(true));
    assert_eq!(cs.restart_count, 0);
    assert_eq!(cs.image, "busybox:1.36");
    let running = cs
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .expect("running state");
    assert!(running.started_at.is_some());

    let pids = env.kubelet().pids("default", "hello");
    assert_eq!(pids.len(), 1);
    let (name, pid) = &pids[0];
    assert_eq!(name, "main");
    assert_eq!(
        cs.container_id.as_deref(),
        Some(format!("process://{pid}").as_str())
    );
    assert!(alive(*pid));

    let log = env
        .kubelet()
        .log_path("default", "hello", "main")
        .expect("log path");
    assert!(log.starts_with(env.dir.path()));
    assert_eq!(read_eventually(&log).await.trim(), "hello from hello");

    let nodes: Api<Node> = Api::all(env.client.clone());
    let node = nodes.get("node-1").await.expect("node registered");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), "kube-node-lease");
    let lease = leases.get("node-1").await.expect("node lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("node-1")
    );

    // Scheduled / Created / Started events were recorded.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let mut reasons = Vec::new();
    for _ in 0..50 {
        reasons = events
            .list(&ListParams::default())
            .await
            .expect("events list")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("hello"))
            .filter_map(|e| e.reason)
            .collect();
        if ["Scheduled", "Created", "Started"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in ["Scheduled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    env.stop().await;
    assert!(!alive(*pid), "container process survived kubelet shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_downward_api_secret_and_configmap_reaches_the_process() {
    let env = Env::start().await;
    let out = env.dir.path().join("env.txt");
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"},
        "data": {"password": "aHVudGVyMg==", "token": "dG9r"}
    }))
    .expect("secret json");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"},
        "data": {"MODE": "fast", "LEVEL": "3"}
    }))
    .expect("cm json");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("cm created");

    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "envy", "labels": {"app": "demo"}, "annotations": {"note": "hi"}},
        "spec": {
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["/bin/sh", "-c"],
                "args": ["env > $(OUT).tmp && mv $(OUT).tmp $(OUT); echo '$$(NOT_EXPANDED)' $(POD_NAME) >> $(OUT).args; exec sleep 600"],
                "env": [
                    {"name": "OUT", "value": out.to_string_lossy()},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": true}}},
                    {"name": "LEVEL_REF", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                    {"name": "GREETING", "value": "hello $(POD_NAME)"}
                ],
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "creds"}}
                ]
            }]
        }
    }))
    .await;
    let pod = wait_pod(&env.pods, "envy", T, "Running", |p| phase(p) == "Running")
        .await
        .expect("pod runs");
    let uid = pod.metadata.uid.clone().expect("uid");
    let text = read_eventually(&out).await;
    let vars: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let want = [
        ("POD_NAME", "envy"),
        ("POD_NS", "default"),
        ("POD_UID", uid.as_str()),
        ("APP", "demo"),
        ("NOTE", "hi"),
        ("NODE", "node-1"),
        ("IP", "127.0.0.1"),
        ("PASSWORD", "hunter2"),
        ("LEVEL_REF", "3"),
        ("GREETING", "hello envy"),
        ("CFG_MODE", "fast"),
        ("CFG_LEVEL", "3"),
        ("password", "hunter2"),
        ("token", "tok"),
        ("HOSTNAME", "envy"),
    ];
    for (k, v) in want {
        assert_eq!(vars.get(k).copied(), Some(v), "env {k} in:\n{text}");
    }
    assert!(!vars.contains_key("MAYBE"));
    let args = read_eventually(&env.dir.path().join("env.txt.args")).await;
    assert_eq!(args.trim(), "$(NOT_EXPANDED) envy");

    // The secret value never reaches the kubelet's own files or the pod status.
    let status = serde_json::to_string(&pod.status).expect("json");
    assert!(!status.contains("hunter2"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_a_config_error_until_it_appears() {
    let env = Env::start_with(|mut c| {
        c.config_retry = Duration::from_millis(300);
        c
    })
    .await;
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "needs-secret"},
        "spec": {"containers": [{
            "name": "main", "image": "busybox", "command": ["sleep", "600"],
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]
        }]}
    }))
    .await;
    let pod = wait_pod(
        &env.pods,
        "needs-secret",
        T,
        "CreateContainerConfigError",
        |p| waiting_reason(p, "main").as_deref() == Some("CreateContainerConfigError"),
    )
    .await
    .expect("config error reported");
    assert_eq!(phase(&pod), "Pending");
    let msg = container_status(&pod, "main")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("secret \"later\" not found"), "{msg}");

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "later"}, "data": {"k": "dg=="}
    }))
    .expect("secret json");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    wait_pod(
        &env.pods,
        "needs-secret",
        T,
        "Running after the secret exists",
        |p| phase(p) == "Running" && is_ready(p),
    )
    .await
    .expect("starts once the secret exists");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probe_follows_an_http_server() {
    let env = Env::start().await;
    let port = free_port().expect("port");
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{
            "name": "http", "image": "python:3",
            "command": ["python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1", "--directory", www.to_string_lossy()],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {
                "httpGet": {"path": "/ready", "port": "http"},
                "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1, "timeoutSeconds": 1
            }
        }]}
    }))
    .await;
    let pod = wait_pod(&env.pods, "web", T, "Running", |p| phase(p) == "Running")
        .await
        .expect("runs");
    // No /ready file yet: 404, so not ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pod = env.pods.get("web").await.unwrap_or(pod);
    assert!(!is_ready(&pod), "ready before the probe passed");
    assert_eq!(condition(&pod, "ContainersReady").as_deref(), Some("False"));

    std::fs::write(www.join("ready"), "ok").expect("write");
    wait_pod(&env.pods, "web", T, "Ready", is_ready)
        .await
        .expect("becomes ready");
    let t_ready = condition_time(&env.pods.get("web").await.expect("get"), "Ready");

    std::fs::remove_file(www.join("ready")).expect("rm");
    let pod = wait_pod(&env.pods, "web", T, "not Ready", |p| !is_ready(p))
        .await
        .expect("becomes unready");
    assert_ne!(
        condition_time(&pod, "Ready"),
        t_ready,
        "transition time moves on a flip"
    );
    assert_eq!(phase(&pod), "Running");
    env.stop().await;
}

fn condition_time(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == t))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_always_crash_loops_with_backoff() {
    let env = Env::start().await;
    env.create(sh_pod("crasher", "echo boom; exit 3")).await;
    let pod = wait_pod(
        &env.pods,
        "crasher",
        T,
        "restartCount >= 2 in CrashLoopBackOff",
        |p| {
            container_status(p, "main").is_some_and(|c| c.restart_count >= 2)
                && waiting_reason(p, "main").as_deref() == Some("CrashLoopBackOff")
        },
    )
    .await
    .expect("crash loops");
    assert_eq!(phase(&pod), "Running");
    assert!(!is_ready(&pod));
    let cs = container_status(&pod, "main").expect("status");
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(last.finished_at.is_some());
    let msg = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("back-off") && msg.contains("crasher"), "{msg}");
    let log = env
        .kubelet()
        .log_path("default", "crasher", "main")
        .expect("log");
    // Logs are appended across restarts.
    assert!(read_eventually(&log).await.matches("boom").count() >= 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_and_on_failure_reach_terminal_phases() {
    let env = Env::start().await;
    let mut ok = sh_pod("ok", "exit 0");
    ok["spec"]["restartPolicy"] = json!("Never");
    let mut bad = sh_pod("bad", "echo oops >&2; exit 7");
    bad["spec"]["restartPolicy"] = json!("Never");
    bad["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let mut retry = sh_pod(
        "retry",
        &format!(
            "if [ -f {0} ]; then exit 0; else touch {0}; exit 1; fi",
            env.dir.path().join("second-run").display()
        ),
    );
    retry["spec"]["restartPolicy"] = json!("OnFailure");
    for p in [ok, bad, retry] {
        env.create(p).await;
    }
    let terminal = |p: &Pod| matches!(phase(p), "Succeeded" | "Failed");
    let ok = wait_pod(&env.pods, "ok", T, "terminal", terminal)
        .await
        .expect("ok");
    let bad = wait_pod(&env.pods, "bad", T, "terminal", terminal)
        .await
        .expect("bad");
    let retry = wait_pod(&env.pods, "retry", T, "terminal", terminal)
        .await
        .expect("retry");
    assert_eq!(phase(&ok), "Succeeded");
    assert_eq!(phase(&bad), "Failed");
    assert_eq!(phase(&retry), "Succeeded");
    let term = |p: &Pod| {
        container_status(p, "main")
            .and_then(|c| c.state.clone())
            .and_then(|s| s.terminated)
            .expect("terminated state")
    };
    assert_eq!(term(&ok).exit_code, 0);
    assert_eq!(term(&ok).reason.as_deref(), Some("Completed"));
    assert_eq!(term(&bad).exit_code, 7);
    assert_eq!(term(&bad).reason.as_deref(), Some("Error"));
    assert_eq!(term(&bad).message.as_deref(), Some("oops"));
    assert_eq!(
        container_status(&retry, "main").map(|c| c.restart_count),
        Some(1)
    );
    assert_eq!(condition(&ok, "Ready").as_deref(), Some("False"));
    // Terminal pods stay until someone deletes them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        phase(&env.pods.get("ok").await.expect("still there")),
        "Succeeded"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_sends_sigterm_then_sigkill_after_the_grace_period() {
    let env = Env::start().await;
    let marker = env.dir.path().join("got-term");
    // Traps SIGTERM, records it, and keeps running: only SIGKILL ends it.
    let stubborn = format!(
        "trap 'echo term >> {}' TERM; while true; do sleep 0.1; done",
        marker.display()
    );
    let mut pod = sh_pod("stubborn", &stubborn);
    pod["spec"]["terminationGracePeriodSeconds"] = json!(2);
    env.create(pod).await;
    // Exits promptly on SIGTERM.
    let polite_marker = env.dir.path().join("polite-term");
    let mut polite = sh_pod(
        "polite",
        &format!(
            "trap 'echo bye > {}; exit 0' TERM; while true; do sleep 0.1; done",
            polite_marker.display()
        ),
    );
    polite["spec"]["terminationGracePeriodSeconds"] = json!(30);
    env.create(polite).await;
    for name in ["stubborn", "polite"] {
        wait_pod(&env.pods, name, T, "Running", |p| phase(p) == "Running")
            .await
            .expect("runs");
    }
    let (_, pid) = env.kubelet().pids("default", "stubborn")[0].clone();

    let started = std::time::Instant::now();
    env.pods
        .delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete accepted");
    env.pods
        .delete("polite", &DeleteParams::default())
        .await
        .expect("delete accepted");
    assert_eq!(read_eventually(&marker).await.trim(), "term");
    wait_pod_gone(&env.pods, "polite", Duration::from_secs(10))
        .await
        .expect("polite pod removed well before its 30 s grace period");
    assert_eq!(read_eventually(&polite_marker).await.trim(), "bye");
    wait_pod_gone(&env.pods, "stubborn", T)
        .await
        .expect("pod removed");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "removed before the grace period"
    );
    assert!(!alive(pid), "process survived deletion");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_container_is_restarted() {
    let env = Env::start().await;
    env.create(sh_pod("victim", "exec sleep 600")).await;
    wait_pod(&env.pods, "victim", T, "Ready", is_ready)
        .await
        .expect("runs");
    let (_, pid) = env.kubelet().pids("default", "victim")[0].clone();
    env.kubelet()
        .kill_container("default", "victim", "main")
        .expect("kill");
    let pod = wait_pod(&env.pods, "victim", T, "restarted and ready", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count == 1) && is_ready(p)
    })
    .await
    .expect("restarts");
    let last = container_status(&pod, "main")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("last state");
    assert_eq!(last.exit_code, 137);
    assert_eq!(last.signal, Some(9));
    let (_, new_pid) = env.kubelet().pids("default", "victim")[0].clone();
    assert_ne!(pid, new_pid);
    assert!(
        env.kubelet()
            .kill_container("default", "victim", "nope")
            .is_err()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_the_main_container() {
    let env = Env::start().await;
    let file = env.dir.path().join("order.txt");
    let f = file.display().to_string();
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "inits"},
        "spec": {
            "initContainers": [
                {"name": "one", "image": "busybox", "command": ["sh", "-c", format!("sleep 0.3; echo one >> {f}")]},
                {"name": "two", "image": "busybox", "command": ["sh", "-c", format!("echo two >> {f}")]}
            ],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", format!("echo main >> {f}; exec sleep 600")]}]
        }
    }))
    .await;
    let pod = wait_pod(&env.pods, "inits", T, "Ready", is_ready)
        .await
        .expect("runs");
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    let inits = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .expect("init statuses");
    assert_eq!(inits.len(), 2);
    for s in &inits {
        let t = s
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!(t.exit_code, 0);
        assert_eq!(t.reason.as_deref(), Some("Completed"));
    }
    assert_eq!(read_eventually(&file).await, "one\ntwo\nmain\n");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_container() {
    let env = Env::start().await;
    let healthy = env.dir.path().join("healthy");
    std::fs::write(&healthy, "").expect("touch");
    let mut pod = sh_pod("sick", "exec sleep 600");
    pod["spec"]["terminationGracePeriodSeconds"] = json!(1);
    pod["spec"]["containers"][0]["livenessProbe"] = json!({
        "exec": {"command": ["test", "-f", healthy.to_string_lossy()]},
        "periodSeconds": 1, "failureThreshold": 2
    });
    env.create(pod).await;
    wait_pod(&env.pods, "sick", T, "Ready", is_ready)
        .await
        .expect("runs");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = env.pods.get("sick").await.expect("get");
    assert_eq!(
        container_status(&pod, "main").map(|c| c.restart_count),
        Some(0)
    );
    std::fs::remove_file(&healthy).expect("rm");
    let pod = wait_pod(&env.pods, "sick", T, "restarted", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("liveness restarts it");
    let last = container_status(&pod, "main")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("last state");
    // `sleep` dies of the SIGTERM.
    assert_eq!(last.exit_code, 143);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_image_without_command_does_not_start() {
    let env = Env::start().await;
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nginx"},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    }))
    .await;
    let pod = wait_pod(&env.pods, "nginx", T, "ErrImageNeverPull", |p| {
        waiting_reason(p, "web").as_deref() == Some("ErrImageNeverPull")
    })
    .await
    .expect("reported");
    assert_eq!(phase(&pod), "Pending");
    assert!(env.kubelet().pids("default", "nginx").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_shutdown_terminates_pods_like_a_node_shutdown() {
    let mut env = Env::start_with(|mut c| {
        c.shutdown_grace_period = Duration::from_secs(1);
        c
    })
    .await;
    let marker = env.dir.path().join("term");
    env.create(sh_pod(
        "longrun",
        &format!(
            "trap 'echo term > {}; exit 0' TERM; while true; do sleep 0.1; done",
            marker.display()
        ),
    ))
    .await;
    wait_pod(&env.pods, "longrun", T, "Ready", is_ready)
        .await
        .expect("runs");
    let (_, pid) = env.kubelet().pids("default", "longrun")[0].clone();
    env.stop_kubelet().await;
    assert!(!alive(pid));
    assert_eq!(read_eventually(&marker).await.trim(), "term");
    let pod = env.pods.get("longrun").await.expect("pod kept");
    assert_eq!(phase(&pod), "Failed");
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("Terminated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_everything_and_restarts_nothing() {
    let mut env = Env::start().await;
    let starts = env.dir.path().join("starts");
    env.create(sh_pod(
        "orphan",
        &format!("echo started >> {}; exec sleep 600", starts.display()),
    ))
    .await;
    wait_pod(&env.pods, "orphan", T, "Ready", is_ready)
        .await
        .expect("runs");
    let (_, pid) = env.kubelet().pids("default", "orphan")[0].clone();
    drop(env.kubelet.take());
    for _ in 0..100 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid), "process outlived the dropped kubelet");
    // restartPolicy Always with a 0.5 s back-off: nothing may start it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read_eventually(&starts).await.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_gates_started_and_ready() {
    let env = Env::start().await;
    let flag = env.dir.path().join("started");
    let mut pod = sh_pod("slow-start", "exec sleep 600");
    pod["spec"]["containers"][0]["startupProbe"] = json!({
        "exec": {"command": ["test", "-f", flag.to_string_lossy()]},
        "periodSeconds": 1, "failureThreshold": 60
    });
    env.create(pod).await;
    let pod = wait_pod(&env.pods, "slow-start", T, "Running", |p| {
        phase(p) == "Running"
    })
    .await
    .expect("runs");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pod = env.pods.get("slow-start").await.unwrap_or(pod);
    let cs = container_status(&pod, "main").expect("status");
    assert_eq!(cs.started, Some(false));
    assert!(!cs.ready);
    std::fs::write(&flag, "").expect("touch");
    let pod = wait_pod(&env.pods, "slow-start", T, "started and Ready", is_ready)
        .await
        .expect("ready after the startup probe passes");
    assert_eq!(
        container_status(&pod, "main").and_then(|c| c.started),
        Some(true)
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_hook_runs_before_sigterm() {
    let env = Env::start().await;
    let trail = env.dir.path().join("trail");
    let t = trail.display().to_string();
    let mut pod = sh_pod(
        "hooked",
        &format!("trap 'echo term >> {t}; exit 0' TERM; while true; do sleep 0.1; done"),
    );
    pod["spec"]["containers"][0]["lifecycle"] = json!({
        "preStop": {"exec": {"command": ["sh", "-c", format!("echo prestop >> {t}")]}}
    });
    env.create(pod).await;
    wait_pod(&env.pods, "hooked", T, "Ready", is_ready)
        .await
        .expect("runs");
    env.pods
        .delete("hooked", &DeleteParams::default())
        .await
        .expect("delete");
    wait_pod_gone(&env.pods, "hooked", T)
        .await
        .expect("removed");
    assert_eq!(read_eventually(&trail).await, "prestop\nterm\n");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_goes_to_the_main_process_and_sigkill_to_the_group() {
    let env = Env::start().await;
    let child_pid_file = env.dir.path().join("child.pid");
    let child_term = env.dir.path().join("child-term");
    // The main process exits at once on SIGTERM; its background child traps SIGTERM.
    // Like a container runtime, the kubelet signals only the main process, and the
    // child dies with the container (SIGKILL to the group) without seeing SIGTERM.
    let script = format!(
        "sh -c 'trap \"echo term > {ct}\" TERM; while true; do sleep 0.1; done' & echo $! > {pf}; trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ct = child_term.display(),
        pf = child_pid_file.display()
    );
    env.create(sh_pod("family", &script)).await;
    wait_pod(&env.pods, "family", T, "Ready", is_ready)
        .await
        .expect("runs");
    let child: u32 = read_eventually(&child_pid_file)
        .await
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(child));
    env.pods
        .delete("family", &DeleteParams::default())
        .await
        .expect("delete");
    wait_pod_gone(&env.pods, "family", T)
        .await
        .expect("removed");
    for _ in 0..100 {
        if !alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(child), "the container's child process survived");
    assert!(!child_term.exists(), "the child got SIGTERM");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executable_is_a_start_error_and_backs_off() {
    let env = Env::start().await;
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "typo"},
        "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["/no/such/binary"]}]}
    }))
    .await;
    let pod = wait_pod(
        &env.pods,
        "typo",
        T,
        "StartError then CrashLoopBackOff",
        |p| waiting_reason(p, "main").as_deref() == Some("CrashLoopBackOff"),
    )
    .await
    .expect("reported");
    let last = container_status(&pod, "main")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("last state");
    assert_eq!(last.reason.as_deref(), Some("StartError"));
    assert_eq!(last.exit_code, 128);
    assert!(
        last.message
            .as_deref()
            .unwrap_or("")
            .contains("/no/such/binary"),
        "{last:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_kubelet_status_and_events() {
    let env = Env::start().await;
    env.create(sh_pod("shown", "exec sleep 600")).await;
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/shown",
        "--timeout=30s",
    ]);
    assert!(ok, "kubectl wait: {out}");
    let mut described = String::new();
    for _ in 0..50 {
        let (ok, out) = kubectl(&["describe", "pod", "shown"]);
        assert!(ok, "kubectl describe: {out}");
        described = out;
        if described.contains("Started container main") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        "Node:             node-1",
        "Status:           Running",
        "IP:               127.0.0.1",
        "Successfully assigned default/shown to node-1",
        "Started container main",
    ] {
        assert!(described.contains(want), "{want:?} not in:\n{described}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kubelet_runs_only_its_own_node_pods() {
    let env = Env::start().await;
    let dir2 = tempfile::tempdir().expect("tempdir");
    let second = Kubelet::start(
        env.client.clone(),
        KubeletConfig::new("node-2", ImageMap::new(), dir2.path()),
    )
    .await
    .expect("second kubelet");
    let mut pinned = sh_pod("pinned", "exec sleep 600");
    pinned["spec"]["nodeName"] = json!("node-2");
    env.create(pinned).await;
    let pod = wait_pod(&env.pods, "pinned", T, "Ready", is_ready)
        .await
        .expect("runs on node-2");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-2")
    );
    assert_eq!(second.pids("default", "pinned").len(), 1);
    assert!(env.kubelet().pids("default", "pinned").is_empty());
    second.shutdown().await;
    env.stop().await;
}
