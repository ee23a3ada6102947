//! The worker image mapped to the real `workpool-worker` binary: a pod consumes tasks
//! from a real redis-server, is Ready through its /readyz probe, and drains on deletion.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster, repo_root};
use workpool_tests::kubelet::testing::{
    container_status, free_port, is_ready, phase, wait_pod, wait_pod_gone,
};
use workpool_tests::kubelet::{ImageMap, KubeletConfig};
use workpool_worker::testing::RedisServer;

const T: Duration = Duration::from_secs(60);

/// `redis-cli` against the test's server, for assertions in Redis' own words.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The worker binary, (re)built with `cargo build -p workpool-worker` so that it is
/// current. `Err` says why it cannot be used.
fn worker_binary() -> Result<PathBuf, String> {
    let bin = repo_root().join("target/debug/workpool-worker");
    let mut build = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "workpool-worker"])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cargo build -p workpool-worker: {e}"))?;
    // Other builds may hold the target-dir lock for a while; wait, but not forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let built = loop {
        match build.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            _ => {
                let _ = build.kill();
                let _ = build.wait();
                break false;
            }
        }
    };
    if !built {
        // A stale binary would test old code: refuse it.
        return Err("cargo build -p workpool-worker failed".into());
    }
    let help = Command::new(&bin)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("{} run --help: {e}", bin.display()))?;
    if !help.status.success() {
        return Err(format!(
            "{} run --help failed: {}",
            bin.display(),
            String::from_utf8_lossy(&help.stderr)
        ));
    }
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pod_consumes_tasks_from_redis_and_drains_on_deletion() {
    // The worker runtime exists; a binary that cannot be built is a failure, not a skip.
    let bin = worker_binary().unwrap_or_else(|reason| panic!("{reason}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().expect("redis-server starts");
    // The local backend (the real control plane, else the double): the process kubelet
    // is what is under test, so an external cluster (WORKPOOL_E2E_KUBECONFIG), which
    // runs its own kubelets, is not used.
    let opts = ClusterOptions {
        own_namespace: true,
        ..ClusterOptions::default()
    };
    let cluster = match workpool_tests::cluster::local_backend().expect("backend") {
        workpool_tests::cluster::LocalBackend::Real => TestCluster::start_real(opts).await,
        workpool_tests::cluster::LocalBackend::Double => TestCluster::start_double(opts).await,
    }
    .expect("cluster");
    let ns = cluster.namespace().to_string();
    let client = cluster.client();
    let cfg = KubeletConfig::new(
        "node-1",
        ImageMap::new().with("ghcr.io/workpool-dev/workpool-worker", &bin),
        dir.path().join("kubelet"),
    )
    .with_scheduler(true);
    let kubelet = cluster.start_kubelet(cfg).await.expect("kubelet");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let out = dir.path().join("done.txt");
    let metrics_port = free_port().expect("port");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker-0", "labels": {"workpool.dev/pool": "demo"}},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "worker",
                "image": "ghcr.io/workpool-dev/workpool-worker:0.1.0",
                "args": ["run"],
                "ports": [{"name": "metrics", "containerPort": metrics_port}],
                "env": [
                    {"name": "WORKPOOL_REDIS_URL", "value": redis.url()},
                    {"name": "WORKPOOL_STREAM", "value": "tasks"},
                    {"name": "WORKPOOL_GROUP", "value": "demo"},
                    {"name": "WORKPOOL_CONSUMER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "WORKPOOL_METRICS_ADDR", "value": format!("127.0.0.1:{metrics_port}")},
                    {"name": "WORKPOOL_EXEC", "value": format!("cat >> {}; echo >> {}", out.display(), out.display())},
                    {"name": "WORKPOOL_CONCURRENCY", "value": "1"}
                ],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 2}
            }]
        }
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let pod = wait_pod(&pods, "worker-0", T, "Running and Ready", |p| {
        phase(p) == "Running" && is_ready(p)
    })
    .await
    .expect("worker pod becomes ready");
    let cs = container_status(&pod, "worker").expect("status");
    assert_eq!(cs.restart_count, 0);

    // Produce tasks with the real CLI.
    let mut submit = Command::new(&bin)
        .args(["submit", "--redis-url", &redis.url(), "--stream", "tasks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("submit runs");
    {
        let mut stdin = submit.stdin.take().expect("stdin");
        for i in 0..20 {
            writeln!(stdin, "{{\"n\":{i}}}").expect("write");
        }
    }
    assert!(submit.wait().expect("submit exits").success());

    let mut done = String::new();
    for _ in 0..300 {
        done = std::fs::read_to_string(&out).unwrap_or_default();
        if done.lines().filter(|l| !l.trim().is_empty()).count() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        assert!(
            done.contains(&format!("{{\"n\":{i}}}")),
            "task {i} not run:\n{done}"
        );
    }
    // The consumer in the group is the pod's name (downward API).
    let consumers = redis_cli(&redis, &["XINFO", "CONSUMERS", "tasks", "demo"]);
    assert!(consumers.contains("worker-0"), "{consumers}");

    // Deletion: SIGTERM, the worker drains and exits 0 well inside its 30 s grace.
    let (_, pid) = kubelet.pids(&ns, "worker-0")[0].clone();
    let started = std::time::Instant::now();
    pods.delete("worker-0", &DeleteParams::default())
        .await
        .expect("delete");
    wait_pod_gone(&pods, "worker-0", T)
        .await
        .expect("pod removed");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the worker did not exit on SIGTERM"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z ")
        }
    );
    let log = std::fs::read_dir(dir.path().join("kubelet"))
        .expect("work dir")
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{ns}_worker-0_"))
        })
        .map(|e| e.path().join("worker.log"))
        .expect("pod dir kept with its log");
    assert!(
        std::fs::metadata(&log)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    );
    kubelet.shutdown().await;
}
