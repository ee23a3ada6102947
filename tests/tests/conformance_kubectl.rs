//! The Kubernetes API as the real `kubectl` (the one built at the pinned Kubernetes
//! release, else the one on `PATH`) shows it to a user of our CRD and pods.
//!
//! Each test gets a cluster (with the `tests/fixtures` Widget CRD) in a namespace of its
//! own (the kubeconfig's default namespace) and drives `kubectl` through its kubeconfig.
//! The cluster is the real control plane, or the real cluster `WORKPOOL_E2E_KUBECONFIG`
//! names (`tests/kind/`); pods are made unschedulable so that no container runs anywhere.
//! Without kubectl the tests print why and pass vacuously, except under `CI=true`.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use workpool_tests::cluster::{ClusterOptions, TestCluster, kubectl_path};

/// Whether kubectl can run; prints why not (and fails under `CI=true`).
fn have_kubectl(test: &str) -> bool {
    let kubectl = kubectl_path();
    if std::process::Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {} cannot run, and CI=true",
        kubectl.display()
    );
    eprintln!("SKIPPED {test}: {} cannot run", kubectl.display());
    false
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout={:?} stderr={:?}",
            self.ok, self.stdout, self.stderr
        )
    }
}

async fn setup(test: &str) -> Option<TestCluster> {
    if !have_kubectl(test) {
        return None;
    }
    let opts = ClusterOptions::with_fixtures();
    Some(
        TestCluster::start_with(opts)
            .await
            .expect("test cluster starts"),
    )
}

/// `kubectl wait` timeout: long enough for a real cluster's controllers.
const WAIT: &str = "--timeout=90s";

fn cmd(c: &TestCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(kubectl_path());
    cmd.args(args)
        .env("KUBECONFIG", c.kubeconfig_path())
        .env("KUBECACHEDIR", c.temp_dir().join("kube-cache"))
        .env_remove("KUBECTL_EXTERNAL_DIFF")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn kubectl(c: &TestCluster, args: &[&str]) -> Out {
    let out = cmd(c, args).output().await.expect("kubectl runs");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn kubectl_in(c: &TestCluster, args: &[&str], input: &str) -> Out {
    let mut cmd = cmd(c, args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().await.expect("kubectl output");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(c: &TestCluster, args: &[&str]) -> String {
    let o = kubectl(c, args).await;
    assert!(o.ok, "kubectl {args:?} failed: {o:?}");
    o.stdout
}

/// Runs kubectl until it succeeds with an output `pred` accepts (up to 90 s): for what a
/// real cluster does asynchronously, like publishing a new CRD's schema.
async fn ok_eventually(c: &TestCluster, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let o = kubectl(c, args).await;
        if o.ok && pred(&o.stdout) {
            return o.stdout;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("kubectl {args:?} did not succeed as expected within 90s: {o:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ok_in(c: &TestCluster, args: &[&str], input: &str) -> String {
    let o = kubectl_in(c, args, input).await;
    assert!(o.ok, "kubectl {args:?} failed: {o:?}");
    o.stdout
}

/// No scheduler serves `schedulerName`: the pod stays Pending and unbound on a real
/// cluster too (no image is pulled, no container runs).
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: web}\nspec:\n  schedulerName: workpool-conformance-no-scheduler\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, '100']\n";

fn widget(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: conformance.workpool.dev/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec: {spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_tables_and_explain() {
    let Some(c) = setup("discovery_tables_and_explain").await else {
        return;
    };
    // Verbose, with an empty discovery cache: kubectl asks for aggregated discovery and
    // accepts the plain answer.
    let v = kubectl(&c, &["get", "ns", "-v=8"]).await;
    assert!(v.ok, "{v:?}");
    assert!(
        v.stderr.contains("as=APIGroupDiscoveryList"),
        "kubectl did not ask for aggregated discovery"
    );
    assert!(!v.stderr.contains("couldn't get"), "{}", v.stderr);
    // A real apiserver publishes a new CRD in discovery and OpenAPI asynchronously.
    let res = ok_eventually(&c, &["api-resources"], |o| o.contains("\nwidgets ")).await;
    let line = res
        .lines()
        .find(|l| l.starts_with("widgets "))
        .unwrap_or_else(|| panic!("widgets not in api-resources: {res}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "widgets",
            "wd",
            "conformance.workpool.dev/v1",
            "true",
            "Widget"
        ]
    );
    assert!(
        res.lines().any(
            |l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "po", "v1", "true", "Pod"]
        ),
        "{res}"
    );
    let header = v.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "STATUS", "AGE"]
    );
    assert!(
        v.stdout
            .lines()
            .any(|l| l.starts_with("default ") && l.contains("Active")),
        "{}",
        v.stdout
    );
    ok_in(&c, &["apply", "-f", "-"], POD).await;
    let pods = ok(&c, &["get", "pods"]).await;
    let hdr: Vec<&str> = pods
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(hdr, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let row: Vec<&str> = pods
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["p", "0/1", "Pending", "0"]);
    ok_in(
        &c,
        &["apply", "-f", "-"],
        &widget("w", "{replicas: 2, size: medium}"),
    )
    .await;
    let ws = ok(&c, &["get", "wd"]).await;
    let hdr: Vec<&str> = ws
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(hdr, ["NAME", "REPLICAS", "SIZE", "READY", "AGE"]);
    let row: Vec<&str> = ws
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["w", "2", "medium"]);
    let all = ok(&c, &["get", "pods", "-A", "-o", "wide"]).await;
    assert!(
        all.lines()
            .next()
            .unwrap_or_default()
            .starts_with("NAMESPACE"),
        "{all}"
    );
    let ex = ok_eventually(&c, &["explain", "widget.spec"], |o| {
        o.contains("What the widget should be.")
    })
    .await;
    assert!(ex.contains("What the widget should be."), "{ex}");
    assert!(ex.contains("replicas"), "{ex}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_label_selectors_and_delete() {
    let Some(c) = setup("apply_get_label_selectors_and_delete").await else {
        return;
    };
    assert!(
        ok_in(&c, &["apply", "-f", "-"], POD)
            .await
            .contains("pod/p created")
    );
    assert!(
        ok_in(&c, &["apply", "-f", "-"], POD)
            .await
            .contains("pod/p unchanged")
    );
    let changed = POD.replace("app: web", "app: web, tier: front");
    assert!(
        ok_in(&c, &["apply", "-f", "-"], &changed)
            .await
            .contains("pod/p configured")
    );
    let labels = ok(
        &c,
        &["get", "pod", "p", "-o", "jsonpath={.metadata.labels.tier}"],
    )
    .await;
    assert_eq!(labels, "front");
    for (n, tier) in [("a", "front"), ("b", "front"), ("c", "back")] {
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {n}\n  labels: {{tier: {tier}}}\ndata: {{k: v}}\n"
        );
        ok_in(&c, &["apply", "-f", "-"], &yaml).await;
    }
    let names = ok(&c, &["get", "cm", "-l", "tier=front", "-o", "name"]).await;
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["configmap/a", "configmap/b"]
    );
    let names = ok(&c, &["get", "cm", "-l", "tier notin (front)", "-o", "name"]).await;
    // kube-root-ca.crt (published into every namespace by a real controller manager) has
    // no tier label, so `notin` selects it too.
    assert_eq!(
        names
            .lines()
            .filter(|n| *n != "configmap/kube-root-ca.crt")
            .collect::<Vec<_>>(),
        ["configmap/c"]
    );
    let names = ok(
        &c,
        &[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=b",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(names.trim(), "configmap/b");
    let out = ok(&c, &["delete", "cm", "-l", "tier=front"]).await;
    assert!(
        out.contains("configmap \"a\" deleted") && out.contains("configmap \"b\" deleted"),
        "{out}"
    );
    let left = ok(&c, &["get", "cm", "-l", "tier", "-o", "name"]).await;
    assert_eq!(left.trim(), "configmap/c");
    let missing = kubectl(&c, &["get", "cm", "nope"]).await;
    assert!(!missing.ok);
    assert_eq!(
        missing.stderr.trim(),
        "Error from server (NotFound): configmaps \"nope\" not found"
    );
    // An unbound pod is deleted at once.
    let out = ok(&c, &["delete", "pod", "p", "--wait=true"]).await;
    assert!(out.contains("pod \"p\" deleted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_all_types_and_scale() {
    let Some(c) = setup("patch_all_types_and_scale").await else {
        return;
    };
    ok_in(&c, &["apply", "-f", "-"], POD).await;
    ok(
        &c,
        &[
            "patch",
            "pod",
            "p",
            "-p",
            r#"{"metadata":{"labels":{"s":"1"}}}"#,
        ],
    )
    .await;
    ok(
        &c,
        &[
            "patch",
            "pod",
            "p",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ],
    )
    .await;
    ok(
        &c,
        &[
            "patch",
            "pod",
            "p",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"1"}]"#,
        ],
    )
    .await;
    let l = ok(
        &c,
        &["get", "pod", "p", "-o", "jsonpath={.metadata.labels}"],
    )
    .await;
    let l: serde_json::Value = serde_json::from_str(&l).expect("labels json");
    assert_eq!(
        l,
        serde_json::json!({"app": "web", "s": "1", "m": "1", "j": "1"})
    );
    ok_in(&c, &["apply", "-f", "-"], &widget("w", "{replicas: 1}")).await;
    let smp = kubectl(
        &c,
        &["patch", "widget", "w", "-p", r#"{"spec":{"replicas":2}}"#],
    )
    .await;
    assert!(!smp.ok);
    assert!(
        smp.stderr.contains("application/strategic-merge-patch+json is not supported by conformance.workpool.dev/v1, Kind=Widget: the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
        "{}",
        smp.stderr
    );
    let bad_json = kubectl(
        &c,
        &[
            "patch",
            "widget",
            "w",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        ],
    )
    .await;
    assert!(!bad_json.ok, "{bad_json:?}");
    let out = ok(&c, &["scale", "widget", "w", "--replicas=4"]).await;
    assert!(
        out.contains("widget.conformance.workpool.dev/w scaled"),
        "{out}"
    );
    assert_eq!(
        ok(
            &c,
            &["get", "widget", "w", "-o", "jsonpath={.spec.replicas}"]
        )
        .await,
        "4"
    );
    let raw = ok(
        &c,
        &[
            "get",
            "--raw",
            &format!(
                "/apis/conformance.workpool.dev/v1/namespaces/{}/widgets/w/scale",
                c.namespace()
            ),
        ],
    )
    .await;
    let scale: serde_json::Value = serde_json::from_str(&raw).expect("scale json");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 4);
    // Status subresource through kubectl.
    ok(
        &c,
        &[
            "patch",
            "widget",
            "w",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":3}}"#,
        ],
    )
    .await;
    assert_eq!(
        ok(
            &c,
            &["get", "widget", "w", "-o", "jsonpath={.status.replicas}"]
        )
        .await,
        "3"
    );
    let sc = ok(
        &c,
        &[
            "get",
            "--raw",
            &format!(
                "/apis/conformance.workpool.dev/v1/namespaces/{}/widgets/w/scale",
                c.namespace()
            ),
        ],
    )
    .await;
    assert!(sc.contains("\"replicas\":3"), "{sc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_and_conflicts() {
    let Some(c) = setup("server_side_apply_and_conflicts").await else {
        return;
    };
    let out = ok_in(
        &c,
        &["apply", "--server-side", "-f", "-"],
        &widget("s", "{replicas: 2}"),
    )
    .await;
    assert!(
        out.contains("widget.conformance.workpool.dev/s serverside-applied"),
        "{out}"
    );
    let conflict = kubectl_in(
        &c,
        &["apply", "--server-side", "--field-manager=bob", "-f", "-"],
        &widget("s", "{replicas: 5}"),
    )
    .await;
    assert!(!conflict.ok, "{conflict:?}");
    assert!(
        conflict
            .stderr
            .contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{}",
        conflict.stderr
    );
    let forced = ok_in(
        &c,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=bob",
            "-f",
            "-",
        ],
        &widget("s", "{replicas: 5}"),
    )
    .await;
    assert!(forced.contains("serverside-applied"), "{forced}");
    assert_eq!(
        ok(
            &c,
            &["get", "widget", "s", "-o", "jsonpath={.spec.replicas}"]
        )
        .await,
        "5"
    );
    let mf = ok(
        &c,
        &[
            "get",
            "widget",
            "s",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    )
    .await;
    assert!(mf.contains("bob"), "{mf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_validation_errors() {
    let Some(c) = setup("conflicts_and_validation_errors").await else {
        return;
    };
    ok_in(&c, &["apply", "-f", "-"], &widget("w", "{replicas: 1}")).await;
    let cur = ok(&c, &["get", "widget", "w", "-o", "json"]).await;
    ok(
        &c,
        &[
            "patch",
            "widget",
            "w",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ],
    )
    .await;
    let stale = kubectl_in(&c, &["replace", "-f", "-"], &cur).await;
    assert!(!stale.ok);
    assert!(
        stale.stderr.contains("Operation cannot be fulfilled on widgets.conformance.workpool.dev \"w\": the object has been modified; please apply your changes to the latest version and try again"),
        "{}",
        stale.stderr
    );
    // CEL rule → 422 printed by kubectl.
    let bad = kubectl_in(
        &c,
        &["apply", "-f", "-"],
        &widget("bad", "{minReplicas: 5, maxReplicas: 2}"),
    )
    .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("The Widget \"bad\" is invalid: spec: Invalid value: minReplicas must not exceed maxReplicas"),
        "{}",
        bad.stderr
    );
    // Unknown fields are refused by kubectl's default strict validation.
    let unknown = kubectl_in(
        &c,
        &["apply", "-f", "-"],
        &widget("u", "{replicas: 1, bogus: true}"),
    )
    .await;
    assert!(!unknown.ok, "{unknown:?}");
    assert!(
        unknown.stderr.contains("unknown field \"spec.bogus\""),
        "{}",
        unknown.stderr
    );
    let pod_unknown = POD.replace("  containers:", "  bogus: 1\n  containers:");
    let strict = kubectl_in(&c, &["apply", "-f", "-"], &pod_unknown).await;
    assert!(!strict.ok, "{strict:?}");
    assert!(
        strict.stderr.contains("Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.bogus\""),
        "{}",
        strict.stderr
    );
    let warn = kubectl_in(
        &c,
        &["apply", "--validate=warn", "-f", "-"],
        &widget("u", "{replicas: 1, bogus: true}"),
    )
    .await;
    assert!(warn.ok, "{warn:?}");
    assert!(
        warn.stderr.contains("unknown field \"spec.bogus\""),
        "{}",
        warn.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_condition_and_delete_with_finalizers() {
    let Some(c) = setup("wait_for_condition_and_delete_with_finalizers").await else {
        return;
    };
    ok_in(&c, &["apply", "-f", "-"], &widget("w", "{replicas: 1}")).await;
    let waiter = cmd(&c, &["wait", "--for=condition=Ready", "widget/w", WAIT])
        .spawn()
        .expect("kubectl wait");
    tokio::time::sleep(Duration::from_millis(500)).await;
    ok(&c, &["patch", "widget", "w", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Test","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#]).await;
    let out = waiter.wait_with_output().await.expect("wait output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("widget.conformance.workpool.dev/w condition met")
    );
    let ready = ok(&c, &["get", "wd", "w"]).await;
    let row: Vec<&str> = ready
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["w", "1", "small", "True"], "{ready}");

    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [conformance.workpool.dev/hold]\n";
    ok_in(&c, &["apply", "-f", "-"], held).await;
    ok(&c, &["delete", "cm", "held", "--wait=false"]).await;
    let ts = ok(
        &c,
        &[
            "get",
            "cm",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    )
    .await;
    assert!(!ts.is_empty(), "deletionTimestamp set");
    let waiter = cmd(&c, &["wait", "--for=delete", "cm/held", WAIT])
        .spawn()
        .expect("kubectl wait");
    tokio::time::sleep(Duration::from_millis(500)).await;
    ok(
        &c,
        &[
            "patch",
            "cm",
            "held",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
    )
    .await;
    let out = waiter.wait_with_output().await.expect("wait output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!kubectl(&c, &["get", "cm", "held"]).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let Some(c) = setup("get_watch_prints_changes").await else {
        return;
    };
    use tokio::io::AsyncBufReadExt;
    ok_in(&c, &["apply", "-f", "-"], &widget("a", "{replicas: 1}")).await;
    let mut watcher = cmd(&c, &["get", "widgets", "-w", "--output-watch-events"])
        .spawn()
        .expect("kubectl get -w");
    let stdout = watcher.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut text = String::new();
    // Reads lines until one starts with `prefix` (the watch is then known to be live,
    // or to have seen everything), however slow the cluster.
    async fn read_until(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        text: &mut String,
        prefix: &str,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix} line from kubectl get -w: {text}"))
                .expect("read kubectl output")
                .unwrap_or_else(|| panic!("kubectl get -w ended before {prefix}: {text}"));
            text.push_str(&line);
            text.push('\n');
            if line.starts_with(prefix) {
                return;
            }
        }
    }
    read_until(&mut lines, &mut text, "ADDED").await;
    ok_in(&c, &["apply", "-f", "-"], &widget("b", "{replicas: 2}")).await;
    ok(
        &c,
        &[
            "patch",
            "widget",
            "a",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":7}}"#,
        ],
    )
    .await;
    ok(&c, &["delete", "widget", "b"]).await;
    read_until(&mut lines, &mut text, "DELETED").await;
    let pid = watcher.id().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop kubectl");
    let _ = watcher.wait().await;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.first()
            .map(|r| r.iter().take(2).copied().collect::<Vec<_>>()),
        Some(vec!["EVENT", "NAME"]),
        "{text}"
    );
    let ev: Vec<Vec<&str>> = rows
        .iter()
        .skip(1)
        .map(|r| r.iter().take(3).copied().collect())
        .collect();
    assert_eq!(
        ev,
        [
            ["ADDED", "a", "1"],
            ["ADDED", "b", "2"],
            ["MODIFIED", "a", "7"],
            ["DELETED", "b", "2"]
        ],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_through_kubectl() {
    let Some(c) = setup("garbage_collection_through_kubectl").await else {
        return;
    };
    ok_in(
        &c,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n",
    )
    .await;
    let uid = ok(
        &c,
        &["get", "cm", "owner", "-o", "jsonpath={.metadata.uid}"],
    )
    .await;
    let dep = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: dep\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\nstringData: {{a: b}}\n"
    );
    ok_in(&c, &["apply", "-f", "-"], &dep).await;
    assert_eq!(
        ok(&c, &["get", "secret", "dep", "-o", "jsonpath={.data.a}"]).await,
        "Yg=="
    );
    ok(&c, &["delete", "cm", "owner"]).await;
    ok(&c, &["wait", "--for=delete", "secret/dep", WAIT]).await;
    // A dangling owner reference (owner never existed) is collected too.
    let dangling = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: orphan\n  ownerReferences:\n  - {apiVersion: v1, kind: ConfigMap, name: ghost, uid: 00000000-0000-0000-0000-000000000000}\n";
    ok_in(&c, &["apply", "-f", "-"], dangling).await;
    ok(&c, &["wait", "--for=delete", "cm/orphan", WAIT]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_subcommands_send_protobuf() {
    let Some(c) = setup("typed_create_subcommands_send_protobuf").await else {
        return;
    };
    // A namespace of the test's own making, named after the test's namespace.
    let demo = format!("{}-demo", c.namespace());
    let demo = demo.as_str();
    c.adopt_namespace(demo);
    assert!(
        ok(&c, &["create", "namespace", demo])
            .await
            .contains(&format!("namespace/{demo} created"))
    );
    ok(
        &c,
        &[
            "create",
            "configmap",
            "c1",
            "-n",
            demo,
            "--from-literal=a=b",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            demo,
            "--from-literal=url=redis://x:6379/0",
        ],
    )
    .await;
    ok(&c, &["create", "serviceaccount", "bot", "-n", demo]).await;
    assert_eq!(
        ok(
            &c,
            &["get", "cm", "c1", "-n", demo, "-o", "jsonpath={.data.a}"]
        )
        .await,
        "b"
    );
    let secret = ok(
        &c,
        &[
            "get",
            "secret",
            "s1",
            "-n",
            demo,
            "-o",
            "jsonpath={.type} {.data.url}",
        ],
    )
    .await;
    assert_eq!(secret, "Opaque cmVkaXM6Ly94OjYzNzkvMA==");
    // The `default` ServiceAccount is made by a controller on a real cluster: wait.
    let mut sas = String::new();
    for _ in 0..300 {
        sas = ok(&c, &["get", "sa", "-n", demo, "-o", "name"]).await;
        if sas.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        sas.lines().collect::<Vec<_>>(),
        ["serviceaccount/bot", "serviceaccount/default"]
    );
    let dup = kubectl(&c, &["create", "namespace", demo]).await;
    assert!(!dup.ok);
    assert_eq!(
        dup.stderr.trim(),
        format!("Error from server (AlreadyExists): namespaces \"{demo}\" already exists")
    );
}
