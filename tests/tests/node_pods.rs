//! The real node (`workpool_tests::node`): containerd + runc + CNI + the kubelet and
//! kube-proxy built from Kubernetes' source, against the real control plane. One control
//! plane and one node for this test binary; every test works in its own namespace.
//!
//! Where a real node cannot run (not root, no containerd, Kubernetes not built), the tests
//! fail saying what is missing.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use workpool_tests::controlplane::ControlPlane;
use workpool_tests::node::{self, Node, NodeOptions, PROBE_IMAGE};

const PROBE: &str = env!("CARGO_BIN_EXE_workpool-node-probe");

struct Env {
    cp: Arc<ControlPlane>,
    node: &'static Node,
}

/// The control plane and node of this test binary (with the cluster add-ons: CoreDNS and
/// the default StorageClass), started by the first test. Where the real node cannot run,
/// the tests fail saying what is missing.
fn env() -> &'static Env {
    static ENV: OnceLock<std::result::Result<Env, String>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let env = ENV.get_or_init(|| {
        let node = Node::shared().map_err(|e| format!("{e:#}"))?;
        let cp = ControlPlane::shared().map_err(|e| format!("control plane: {e:#}"))?;
        node::addons::install(&cp).map_err(|e| format!("add-ons: {e:#}"))?;
        eprintln!(
            "real node {} Ready in {:.1}s (pod CIDR {})",
            node.name(),
            node.started_in().as_secs_f64(),
            node.pod_cidr()
        );
        Ok(Env { cp, node })
    });
    match env {
        Ok(env) => env,
        Err(reason) => panic!("{reason}"),
    }
}

/// A test's namespace on the shared cluster, deleted on drop.
struct Ns {
    name: String,
    client: Client,
}

impl Drop for Ns {
    fn drop(&mut self) {
        let client = self.client.clone();
        let name = self.name.clone();
        // Best effort, from a thread with its own runtime (drop may run while unwinding).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::default())
                        .await;
                });
            }
        })
        .join();
    }
}

async fn setup(env: &Env) -> Result<Ns> {
    let client = workpool_tests::cluster::client_for(env.cp.admin_kubeconfig()).await?;
    let name = format!("wpn-test-{:08x}", rand::random::<u32>());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    // Pods need the namespace's default ServiceAccount (made by the controller manager).
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sa.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("no default ServiceAccount in {name}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Ns { name, client })
}

async fn create(ns: &Ns, manifest: serde_json::Value) -> Result<()> {
    let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let gvk = match kind.as_str() {
        "Pod" | "Secret" | "ConfigMap" | "ServiceAccount" | "Service" | "PersistentVolumeClaim" => {
            kube::api::GroupVersionKind::gvk("", "v1", &kind)
        }
        "Role" | "RoleBinding" => {
            kube::api::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", &kind)
        }
        other => bail!("unexpected kind {other}"),
    };
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    api.patch(
        &name,
        &PatchParams::apply("node-tests").force(),
        &Patch::Apply(manifest),
    )
    .await
    .with_context(|| format!("applying {kind}/{name}"))?;
    Ok(())
}

fn probe_pod(name: &str, args: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "probe",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
            }],
        },
    })
}

/// Waits until `done` says the pod is where the test wants it; returns it.
async fn wait_pod(ns: &Ns, name: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = api.get_opt(name).await?;
        if let Some(pod) = &pod
            && done(pod)
        {
            return Ok(pod.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} not {what} after 120s: {}",
                serde_json::to_string(&pod.map(|p| p.status))?
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn container_state(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()
}

fn terminated_message(pod: &Pod) -> Option<(i32, String)> {
    let t = container_state(pod)?.terminated.as_ref()?;
    Some((t.exit_code, t.message.clone().unwrap_or_default()))
}

/// Runs a probe pod to completion; returns its exit code and termination message.
async fn run_to_completion(ns: &Ns, pod: serde_json::Value) -> Result<(i32, String)> {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    create(ns, pod).await?;
    let pod = wait_pod(ns, &name, "terminated", |p| terminated_message(p).is_some()).await?;
    terminated_message(&pod).ok_or_else(|| anyhow!("no termination message"))
}

fn running_ip(pod: &Pod) -> Option<String> {
    container_state(pod)?.running.as_ref()?;
    let ready = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .ready;
    if !ready {
        return None;
    }
    pod.status.as_ref()?.pod_ip.clone()
}

/// HTTP GET from the node's network namespace (where every pod IP is routed).
fn http_get_from_node(node: &Node, target: &str) -> Result<String> {
    let out = node
        .command_in_netns(PathBuf::from(PROBE))
        .args(["http-get", target])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!("GET {target} from the node failed: {text}");
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_serving_the_same_port_both_run_and_answer_on_their_pod_ips() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    for name in ["web-a", "web-b"] {
        let mut pod = probe_pod(name, &["serve", "8080", name]);
        pod["spec"]["restartPolicy"] = json!("Always");
        pod["spec"]["containers"][0]["readinessProbe"] =
            json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
        create(&ns, pod).await?;
    }
    let mut ips = Vec::new();
    for name in ["web-a", "web-b"] {
        let pod = wait_pod(&ns, name, "Ready", |p| running_ip(p).is_some()).await?;
        ips.push((name, running_ip(&pod).unwrap_or_default()));
    }
    assert_ne!(ips[0].1, ips[1].1, "each pod has its own IP: {ips:?}");
    let node = &env.node;
    for (name, ip) in &ips {
        let body = tokio::task::block_in_place(|| http_get_from_node(node, &format!("{ip}:8080")))?;
        assert_eq!(body, *name, "pod {name} at {ip}:8080");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reads_its_mounted_secret_and_configmap() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
               "stringData": {"password": "hunter2"}}),
    )
    .await?;
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"mode": "fast"}}),
    )
    .await?;
    let mut pod = probe_pod(
        "reader",
        &["cat", "/etc/creds/password", "/etc/settings/mode"],
    );
    pod["spec"]["volumes"] = json!([
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "settings", "configMap": {"name": "settings"}},
    ]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "creds", "mountPath": "/etc/creds", "readOnly": true},
        {"name": "settings", "mountPath": "/etc/settings", "readOnly": true},
    ]);
    let (code, message) = run_to_completion(&ns, pod).await?;
    assert_eq!(code, 0, "{message}");
    assert!(message.contains("/etc/creds/password=hunter2"), "{message}");
    assert!(message.contains("/etc/settings/mode=fast"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_credentials_get_exactly_what_rbac_grants() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    let n = ns.name.clone();
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}}),
    )
    .await?;
    create(
        &ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "list-pods"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
    )
    .await?;
    create(
        &ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "lister-lists-pods"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": n}]}),
    )
    .await?;
    let pods = format!("pods:{n}");
    let secrets = format!("secrets:{n}");
    let mut pod = probe_pod("lister", &["api", &pods, &secrets, "pods:default", "nodes"]);
    pod["spec"]["serviceAccountName"] = json!("lister");
    let (code, message) = run_to_completion(&ns, pod).await?;
    assert_eq!(code, 0, "{message}");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("pods:{n}=allowed").as_str(),
            format!("secrets:{n}=403").as_str(),
            "pods:default=403",
            "nodes=403",
        ],
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_non_root_with_uid_0_is_refused() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    let mut root = probe_pod("as-root", &["sleep"]);
    root["spec"]["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 0});
    create(&ns, root).await?;
    // The image's own user (65532) passes the same check.
    let mut nonroot = probe_pod("as-nonroot", &["cat", "/etc/hostname"]);
    nonroot["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    let (code, message) = run_to_completion(&ns, nonroot).await?;
    assert_eq!(code, 0, "{message}");
    let pod = wait_pod(&ns, "as-root", "refused", |p| {
        container_state(p)
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
    })
    .await?;
    let waiting = container_state(&pod)
        .and_then(|s| s.waiting.clone())
        .unwrap_or_default();
    assert!(
        waiting
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("non-root"),
        "{waiting:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_filesystem_is_read_only() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    let mut ro = probe_pod("read-only", &["write", "/home/nonroot/file"]);
    ro["spec"]["containers"][0]["securityContext"] = json!({"readOnlyRootFilesystem": true});
    let (code, message) = run_to_completion(&ns, ro).await?;
    assert_eq!(code, 0);
    assert!(message.contains("Read-only file system"), "{message}");
    // The same write succeeds on a writable root filesystem.
    let rw = probe_pod("writable", &["write", "/home/nonroot/file"]);
    let (_, message) = run_to_completion(&ns, rw).await?;
    assert_eq!(message, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_does_not_exist_never_runs() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    let mut pod = probe_pod("missing-image", &["sleep"]);
    pod["spec"]["containers"][0]["image"] = json!("ghcr.io/workpool-dev/not-built:1.0");
    create(&ns, pod).await?;
    let pod = wait_pod(&ns, "missing-image", "failing to pull", |p| {
        container_state(p)
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some("ErrImagePull") | Some("ImagePullBackOff")
                )
            })
    })
    .await?;
    let statuses = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    assert!(
        statuses
            .iter()
            .all(|s| s.state.as_ref().is_some_and(|st| st.running.is_none()))
    );
    assert_eq!(statuses.first().map(|s| s.restart_count), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_a_service_by_dns_name() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    let mut server = probe_pod("echo-server", &["serve", "8080", "hello from echo"]);
    server["spec"]["restartPolicy"] = json!("Always");
    server["metadata"]["labels"] = json!({"app": "echo"});
    create(&ns, server).await?;
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
               "spec": {"selector": {"app": "echo"},
                        "ports": [{"port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);
    // By full name, and by the short name through the pod's DNS search path.
    let by_fqdn = probe_pod("client-fqdn", &["http-get", &format!("{fqdn}:80")]);
    let (code, message) = run_to_completion(&ns, by_fqdn).await?;
    assert_eq!((code, message.as_str()), (0, "hello from echo"));
    let by_short = probe_pod("client-short", &["http-get", "echo:80"]);
    let (code, message) = run_to_completion(&ns, by_short).await?;
    assert_eq!((code, message.as_str()), (0, "hello from echo"));
    // The name resolves to the Service's ClusterIP (kube-proxy carries it to the pod).
    let svc: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(ns.client.clone(), &ns.name);
    let cluster_ip = svc
        .get("echo")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    let resolve = probe_pod("client-resolve", &["resolve", &fqdn]);
    let (code, message) = run_to_completion(&ns, resolve).await?;
    assert_eq!((code, message), (0, cluster_ip));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_the_default_storage_class_binds_and_keeps_data_across_pods() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    // No storageClassName: the default class (`standard`) is filled in by admission.
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
               "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "64Mi"}}}}),
    )
    .await?;
    let with_volume = |name: &str, args: &[&str]| {
        let mut pod = probe_pod(name, args);
        pod["spec"]["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "data", "mountPath": "/data"}]);
        pod
    };
    let (code, message) =
        run_to_completion(&ns, with_volume("writer", &["write", "/data/file"])).await?;
    assert_eq!((code, message.as_str()), (0, "ok"));
    let (code, message) =
        run_to_completion(&ns, with_volume("reader", &["cat", "/data/file"])).await?;
    assert_eq!((code, message.as_str()), (0, "/data/file=x"));
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ns.client.clone(), &ns.name);
    let pvc = pvcs.get("data").await?;
    assert_eq!(
        pvc.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("standard")
    );
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_a_server_on_the_host_at_the_node_host_address() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    // A server a test runs on the host, bound to the address pods see the host at.
    let listener = std::net::TcpListener::bind((env.node.host_ip(), 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nfrom host",
            );
        }
    });
    let pod = probe_pod(
        "to-host",
        &["http-get", &format!("{}:{port}", env.node.host_ip())],
    );
    let (code, message) = run_to_completion(&ns, pod).await?;
    assert_eq!((code, message.as_str()), (0, "from host"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_and_worker_images_built_from_local_binaries_run() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    // The chart's Redis image, as its Dockerfile has it: CMD redis-server ..., user 65532.
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "redis", "labels": {"app": "redis"}},
               "spec": {"securityContext": {"runAsNonRoot": true},
                        "containers": [{"name": "redis",
                                        "image": "ghcr.io/workpool-dev/workpool-redis:0.1.0",
                                        "securityContext": {"readOnlyRootFilesystem": true},
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}}),
    )
    .await?;
    create(
        &ns,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis"},
               "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]}}),
    )
    .await?;
    let ping = probe_pod("ping", &["send", "redis:6379", "PING"]);
    let (code, message) = run_to_completion(&ns, ping).await?;
    assert_eq!((code, message.as_str()), (0, "+PONG"));
    // The worker image (when workpool-worker is built): its entrypoint is the worker.
    let worker = std::path::Path::new(PROBE)
        .parent()
        .map(|d| d.join("workpool-worker"))
        .filter(|p| p.is_file());
    if worker.is_some() {
        create(
            &ns,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
                   "spec": {"restartPolicy": "Never",
                            "containers": [{"name": "worker",
                                            "image": "ghcr.io/workpool-dev/workpool-worker:0.1.0",
                                            "args": ["--version"],
                                            "terminationMessagePolicy": "FallbackToLogsOnError"}]}}),
        )
        .await?;
        let pod = wait_pod(&ns, "worker", "terminated", |p| {
            terminated_message(p).is_some()
        })
        .await?;
        assert_eq!(terminated_message(&pod).map(|(c, _)| c), Some(0));
    } else {
        eprintln!("workpool-worker is not built: the worker image is not checked");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_torn_down_when_the_test_holding_it_panics() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let cp = env.cp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            // Tainted: the other tests' pods must not land on a node that goes away.
            let options = NodeOptions::new().taint("workpool.dev/short-lived", "NoSchedule");
            let node = Node::start(&cp, options).expect("second node starts");
            tx.send((
                node.name().to_string(),
                node.netns(),
                node.dir().to_path_buf(),
            ))
            .expect("send");
            panic!("a test fails while it holds node {}", node.name());
        })
        .join()
    })
    .await?;
    assert!(panicked.is_err(), "the thread panicked");
    let (name, netns, dir) = rx.recv()?;
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "network namespace {netns} is gone"
    );
    assert!(!dir.exists(), "{} is gone", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mountinfo.contains(&dir.display().to_string()),
        "nothing is mounted under {}",
        dir.display()
    );
    let client = workpool_tests::cluster::client_for(env.cp.admin_kubeconfig()).await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt(&name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("Node {name} still registered");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_are_served_through_the_api_server() -> Result<()> {
    let env = tokio::task::spawn_blocking(env).await?;
    let ns = setup(env).await?;
    // The probe prints its result on stdout: the API server fetches it from the kubelet.
    let (code, _) = run_to_completion(&ns, probe_pod("logger", &["cat", "/etc/hostname"])).await?;
    assert_eq!(code, 0);
    let api: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let logs = api.logs("logger", &Default::default()).await?;
    assert_eq!(logs.trim(), "/etc/hostname=logger");
    Ok(())
}
