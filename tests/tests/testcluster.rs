//! `workpool-testcluster`, the cluster for people (`make sandbox`, `make testcluster`, the
//! chart tests): the real control plane and a real node, its kubeconfig written only once
//! the node is Ready, `--image IMAGE=PATH` images that pods run, and nothing left on the
//! machine when it stops: neither on SIGTERM nor when it is SIGKILLed (its watchdogs
//! clean up). Where the real node cannot run, the tests fail saying what is missing.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use workpool_tests::cluster::{EXTERNAL_KUBECONFIG_ENV, fixtures_dir, kubectl_path};

const START: Duration = Duration::from_secs(300);

/// A running `workpool-testcluster` and what it printed about itself.
struct Running {
    child: Child,
    kubeconfig: PathBuf,
    node_dir: PathBuf,
    netns: String,
    stdout: String,
    _dir: tempfile::TempDir,
}

/// Starts the binary with `--image example.com/probe:v1=<the probe program>` and waits for
/// its kubeconfig; the node must be Ready when it appears.
async fn start() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_workpool-testcluster"))
        // The binary is for people; never let it see an external cluster.
        .env_remove(EXTERNAL_KUBECONFIG_ENV)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--crds")
        .arg(fixtures_dir())
        .arg("--image")
        .arg(format!(
            "example.com/probe:v1={}",
            env!("CARGO_BIN_EXE_workpool-node-probe")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start workpool-testcluster");
    // Its report comes once the node is Ready, after the kubeconfig is written.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdout = String::new();
    let deadline = Instant::now() + START;
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no report within {START:?}:\n{stdout}"))
            .expect("read stdout");
        let Some(line) = line else {
            let status = child.wait().await.expect("status");
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            panic!("workpool-testcluster exited ({status}):\n{stdout}\n{err}");
        };
        stdout.push_str(&line);
        stdout.push('\n');
        if line.starts_with("Stop with") {
            break;
        }
    }
    // Keep draining stdout so that the binary never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let node_line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("node dir:"))
        .unwrap_or_else(|| panic!("no node dir line:\n{stdout}"))
        .trim()
        .to_string();
    let node_dir = PathBuf::from(node_line.split_whitespace().next().expect("a path"));
    let netns = node_line
        .rsplit("network namespace ")
        .next()
        .map(|s| s.trim_end_matches(')').to_string())
        .expect("netns");
    Running {
        child,
        kubeconfig,
        node_dir,
        netns,
        stdout,
        _dir: dir,
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "KUBECACHEDIR",
            kubeconfig.with_file_name("kube-cache").as_os_str(),
        )
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The cluster works: the node was Ready when the kubeconfig appeared, the CRDs were
/// applied, and a pod of the `--image` image runs to completion on the node.
async fn check_it_works(r: &Running) {
    let (ok, out) = kubectl(
        &r.kubeconfig,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "True",
        "the node is Ready once the kubeconfig is there"
    );
    let (ok, out) = kubectl(&r.kubeconfig, &["get", "crd", "-o", "name"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.conformance.workpool.dev"
    );
    let pod = r#"{"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "probe",
            "image": "example.com/probe:v1", "args": ["cat", "/etc/hostname"]}]}}"#;
    let file = r.kubeconfig.with_file_name("pod.json");
    std::fs::write(&file, pod).expect("pod manifest");
    let (ok, out) = kubectl(
        &r.kubeconfig,
        &["create", "-f", &file.display().to_string()],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &r.kubeconfig,
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            "pod/probe",
            "--timeout=120s",
        ],
    );
    assert!(ok, "the --image pod did not succeed: {out}");
    let (ok, out) = kubectl(&r.kubeconfig, &["logs", "probe"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "/etc/hostname=probe");
    // A pod that keeps running (a shim and containers to clean up on stop).
    let (ok, out) = kubectl(
        &r.kubeconfig,
        &[
            "run",
            "sleeper",
            "--image=example.com/probe:v1",
            "--image-pull-policy=IfNotPresent",
            "--",
            "sleep",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &r.kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=120s",
        ],
    );
    assert!(ok, "{out}");
}

/// Waits until nothing of the node is left on the machine (the teardown takes a few
/// seconds), or panics with what is.
async fn assert_nothing_left(node_dir: &Path, netns: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = workpool_tests::node::leftovers(node_dir, netns);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind by the stopped node:\n{}",
            left.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_real_cluster_until_sigterm_and_leaves_nothing_behind() {
    let mut r = start().await;
    assert!(
        r.stdout.contains("real Kubernetes control plane") && r.stdout.contains("is real"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("export KUBECONFIG="), "{}", r.stdout);
    check_it_works(&r).await;
    let pid = r.child.id().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(120), r.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(!r.kubeconfig.exists(), "the kubeconfig is removed on exit");
    // Stopped means stopped: nothing is left once it has exited.
    assert_nothing_left(&r.node_dir, &r.netns, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_testcluster_leaves_nothing_behind() {
    let mut r = start().await;
    check_it_works(&r).await;
    r.child.start_kill().expect("SIGKILL");
    r.child.wait().await.expect("reaped");
    // No code of it runs any more: its watchdogs tear the node and control plane down.
    assert_nothing_left(&r.node_dir, &r.netns, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_path_that_does_not_exist_is_refused_before_anything_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_workpool-testcluster"))
        .env_remove(EXTERNAL_KUBECONFIG_ENV)
        .args(["--image", "example.com/x:v1=/nonexistent/program"])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--image example.com/x:v1=/nonexistent/program: no such file"),
        "{err}"
    );
}

/// A node whose process and watchdog were both killed (e.g. with the whole session) is
/// abandoned with its containers running: the next node started on the machine tears it
/// down (`Node::start` runs `reap_abandoned_nodes` first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_node_is_torn_down_by_the_next_node() {
    let mut r = start().await;
    check_it_works(&r).await;
    let slot = r.netns.trim_start_matches("wpn").to_string();
    let watchdog_script = format!("workpool-node-teardown-{slot}.sh");
    let watchdogs: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&watchdog_script))
        })
        .collect();
    assert!(!watchdogs.is_empty(), "the node's watchdog runs");
    for pid in watchdogs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    r.child.start_kill().expect("SIGKILL");
    r.child.wait().await.expect("reaped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = workpool_tests::node::leftovers(&r.node_dir, &r.netns);
    assert!(
        left.iter().any(|l| l.contains("containerd-shim")),
        "without its watchdog the node's containers run on: {left:?}"
    );
    tokio::task::spawn_blocking(workpool_tests::node::reap_abandoned_nodes)
        .await
        .expect("reaped");
    assert_nothing_left(&r.node_dir, &r.netns, Duration::ZERO).await;
}

/// Where the real cluster cannot run (here: the Kubernetes binaries are not where it is
/// told to look), it says what is missing and stops, writing no kubeconfig; nothing is
/// simulated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_real_cluster_cannot_run_it_says_what_is_missing_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_workpool-testcluster"))
        .env_remove(EXTERNAL_KUBECONFIG_ENV)
        .env("WORKPOOL_K8S_BIN", dir.path().join("no-kubernetes-here"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot run the real cluster here")
            && err.contains("kube-apiserver")
            && err.contains("not built"),
        "{err}"
    );
    assert!(!kubeconfig.exists(), "no kubeconfig without a cluster");
}
