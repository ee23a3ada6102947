//! #18's cross-language end-to-end test on the real test cluster (real control plane,
//! real node, the real operator, a real redis-server): producers in Python, Node, Go and
//! Rust (the programs of `examples/producers/`, run as they are) submit tasks to two
//! WorkPools with results on, whose worker pods run them with an `--exec` handler in
//! shell (pool `shell`, 3 pods) and an `--http` handler in JavaScript (pool `js`, 2 pods,
//! a Node.js native sidecar); each producer gets its own results back through its
//! client's `wait_for`. One task per pool fails permanently on its first run: it is
//! dead-lettered, listed by the Go client, retried by `kubectl workpool retry` (the
//! plugin, through the real `kubectl`, with only the rights docs/submit.md lists), and
//! then completes; its new result is read back with the Rust client.
//!
//! Needs python3 with redis-py, node with `clients/node`'s modules, and go (`make deps`
//! installs the client dependencies): without them the test is skipped with the reason,
//! and fails under `CI=true`.

mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use operator_support::*;
use serde_json::{Value, json};
use workpool_client::target::Tls;
use workpool_client::{Layout, Pool};
use workpool_tests::cluster::{kubectl_path, repo_root};
use workpool_tests::node::images::{ImageSpec, which};

/// The Node.js sidecar image (the machine's `node` and the libraries it links).
const NODE_IMAGE: &str = "ghcr.io/workpool-dev/tests-node-handler:test";

/// How long producers, retries and results may take (generous: a shared 2-core machine).
const RESULTS_WITHIN: Duration = Duration::from_secs(180);

/// The payload marker that makes a handler fail permanently on the task's first run.
const FAIL_ONCE: &str = "fail-once";

/// The `--exec` handler of pool `shell` (busybox sh in the worker container): logs each
/// run to `/out/shell.runs`, fails a `fail-once` task permanently (exit 100) the first
/// time (`mkdir` is the atomic "first"), else prints `SH:<PAYLOAD IN UPPER CASE>`.
fn shell_handler() -> String {
    format!(
        "p=$(cat); printf '%s\\n' \"$p\" >> {OUT_IN_POD}/shell.runs; \
         case \"$p\" in *{FAIL_ONCE}*) if mkdir {OUT_IN_POD}/shell.failed 2>/dev/null; then \
         echo \"refused on its first run: $p\" >&2; exit 100; fi;; esac; \
         sleep 0.2; printf 'sh:%s' \"$p\" | tr a-z A-Z"
    )
}

/// The `--http` handler of pool `js`, a server in the Node.js sidecar: logs each request
/// to `/out/js.runs`, answers a `fail-once` task 422 (permanent) the first time, else
/// `js:<length>:<payload>`.
fn js_handler() -> String {
    format!(
        r#"
const fs = require("fs");
require("http").createServer((req, res) => {{
  if (req.url === "/healthz") return res.end("ok");
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {{
    fs.appendFileSync("{OUT_IN_POD}/js.runs", body + "\n");
    if (body.includes("{FAIL_ONCE}")) {{
      try {{
        fs.mkdirSync("{OUT_IN_POD}/js.failed");
        res.writeHead(422);
        return res.end("refused on its first run: " + body);
      }} catch (e) {{
        if (e.code !== "EEXIST") throw e;
      }}
    }}
    setTimeout(() => {{
      res.writeHead(200, {{"content-type": "text/plain"}});
      res.end("js:" + body.length + ":" + body);
    }}, 200);
  }});
}}).listen(8080); // all addresses: the kubelet probes the pod IP
"#
    )
}

/// What the pool's handler answers for `payload`.
fn expected_output(pool: &str, payload: &str) -> String {
    match pool {
        "shell" => format!("sh:{payload}").to_ascii_uppercase(),
        _ => format!("js:{}:{payload}", payload.len()),
    }
}

/// The toolchains and client dependencies the producers need, found or why not.
struct Toolchains {
    python: PathBuf,
    /// Holds the built programs and NODE_PATH.
    _work: tempfile::TempDir,
    node_path: PathBuf,
    go_producer: PathBuf,
    go_dead_letters: PathBuf,
}

/// Runs `cmd`; its stdout, or why it failed.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Toolchains {
    /// Finds python3 with redis-py (the interpreter `make clients-test` uses), node with
    /// `clients/node`'s modules (and builds the package's `dist/`), and go (and builds
    /// the Go producer and the Go dead-letter lister); the reasons for what is missing.
    fn find() -> Result<Toolchains, Vec<String>> {
        let root = repo_root();
        let work = tempfile::tempdir().expect("temp dir");
        let mut missing = Vec::new();

        let venv = root.join(".sandbox/clients-venv/bin/python");
        let python = if venv.is_file() {
            venv
        } else {
            PathBuf::from("python3")
        };
        if let Err(e) = run(Command::new(&python).args(["-c", "import redis"])) {
            missing.push(format!(
                "python3 with redis-py (make deps installs it): {e}"
            ));
        }

        let node_dir = root.join("clients/node");
        // Like `npm install ./clients/node` would: `require("@workpool/client")` finds the
        // package (whose own node_modules has ioredis) through NODE_PATH.
        let node_path = work.path().join("node_modules");
        if let Err(e) = run(Command::new("node").arg("--version")) {
            missing.push(format!("node: {e}"));
        } else if !node_dir.join("node_modules/ioredis").is_dir()
            || !node_dir.join("node_modules/.bin/tsc").is_file()
        {
            missing.push("clients/node's modules (make deps runs `npm ci` there)".to_string());
        } else {
            run(Command::new(node_dir.join("node_modules/.bin/tsc"))
                .args(["-p", "tsconfig.json"])
                .current_dir(&node_dir))
            .unwrap_or_else(|e| panic!("building clients/node: {e}"));
            std::fs::create_dir_all(node_path.join("@workpool")).expect("node_modules");
            std::os::unix::fs::symlink(&node_dir, node_path.join("@workpool/client"))
                .expect("symlink");
        }

        let go_producer = work.path().join("go-produce");
        let go_dead_letters = work.path().join("go-dead-letters");
        if let Err(e) = run(Command::new("go").arg("version")) {
            missing.push(format!("go: {e}"));
        } else {
            for (dir, out) in [
                ("examples/producers/go", &go_producer),
                ("tests/go-dead-letters", &go_dead_letters),
            ] {
                if let Err(e) = run(Command::new("go")
                    .args(["build", "-o"])
                    .arg(out)
                    .arg(".")
                    .current_dir(root.join(dir)))
                {
                    missing.push(format!(
                        "building {dir} (its Go modules: make deps downloads them): {e}"
                    ));
                }
            }
        }

        if missing.is_empty() {
            Ok(Toolchains {
                python,
                _work: work,
                node_path,
                go_producer,
                go_dead_letters,
            })
        } else {
            Err(missing)
        }
    }

    /// The Go client's dead letters of a pool (`tests/go-dead-letters`).
    fn go_dead_letters(&self, redis_url: &str, stream: &str) -> Vec<Value> {
        let out = run(Command::new(&self.go_dead_letters).args([redis_url, stream]))
            .unwrap_or_else(|e| panic!("the Go client listing dead letters: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// A producer program of `examples/producers/` and the tasks it submits to one pool.
struct Producer {
    language: &'static str,
    pool: &'static str,
    payloads: Vec<String>,
}

impl Producer {
    fn new(language: &'static str, pool: &'static str, n: usize, fail_once: bool) -> Self {
        let mut payloads: Vec<String> = (0..n)
            .map(|i| json!({"from": language, "pool": pool, "n": i}).to_string())
            .collect();
        if fail_once {
            payloads.insert(
                n / 2,
                json!({"from": language, "pool": pool, "n": FAIL_ONCE}).to_string(),
            );
        }
        Producer {
            language,
            pool,
            payloads,
        }
    }
}

/// [`Env::wait_ready`], and on a timeout the pods' container states and the handler
/// sidecars' logs (a sidecar that never starts keeps its worker from starting).
async fn wait_ready_or_explain(env: &Env, pool: &str, n: i64) {
    let ready = |v: &Value| {
        v["status"]["readyReplicas"] == json!(n) && cond_status(v, "Ready") == Some("True".into())
    };
    let deadline = tokio::time::Instant::now() + T;
    while tokio::time::Instant::now() < deadline {
        if env.pool(pool).await.is_some_and(|v| ready(&v)) {
            env.wait_ready(pool, n).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut why = String::new();
    for pod in env.pool_pods(pool, true).await {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.map(
            |s| json!({"init": s.init_container_statuses, "containers": s.container_statuses}),
        );
        let log = env
            .node
            .container_log(&env.ns, &name, "handler")
            .unwrap_or_default();
        why += &format!("pod {name}: {}\nhandler log: {log}\n", json!(status));
    }
    panic!("WorkPool {pool}: {n} ready pods not within {T:?}\n{why}");
}

/// One line a producer printed: its task's result.
#[derive(Debug, Clone)]
struct Printed {
    task_id: String,
    state: String,
    output: Option<String>,
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_in_four_languages_get_their_results_and_a_dead_letter_is_retried() {
    let tools = match Toolchains::find() {
        Ok(t) => t,
        Err(missing) => {
            let why = missing.join("; ");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: the producers' toolchains must be there: {why}"
            );
            eprintln!("SKIPPED: the cross-language e2e needs {why}");
            return;
        }
    };
    cargo_build(&[
        "-p",
        "workpool-kubectl",
        "--bin",
        "kubectl-workpool",
        "-p",
        "workpool-client",
        "--example",
        "produce",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let rust_producer = bin_dir().join("examples/produce");

    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op", &[]);
    let node_program = which("node").expect("node");
    let node_image = ImageSpec::for_program(NODE_IMAGE, &node_program).expect("node image");
    let node = env.node;
    tokio::task::spawn_blocking(move || node.import(&node_image))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("importing the Node.js image: {e:#}"));

    // Two pools with results on: `shell` runs an --exec script in each of 3 worker pods,
    // `js` POSTs each task to a Node.js server beside the worker in each of 2 pods.
    let results = json!({"delivery": {"results": {"ttlSeconds": 600}}});
    env.apply_pool(&env.script_pool("shell", 3, &shell_handler(), results.clone()))
        .await;
    let mut js = env.script_pool("js", 2, "unused", results);
    let spec = &mut js["spec"]["template"]["spec"];
    spec["containers"][0]["env"] = json!([
        {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"},
        {"name": "WORKPOOL_HTTP", "value": "http://127.0.0.1:8080/task"},
        {"name": "WORKPOOL_CONCURRENCY", "value": "2"},
        {"name": "WORKPOOL_SHUTDOWN_GRACE", "value": "10"}
    ]);
    spec["initContainers"] = json!([{
        "name": "handler",
        "image": NODE_IMAGE,
        "restartPolicy": "Always",
        "args": ["-e", js_handler()],
        "startupProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                         "periodSeconds": 1, "failureThreshold": 60},
        "volumeMounts": [{"name": "out", "mountPath": OUT_IN_POD}]
    }]);
    env.apply_pool(&js).await;
    env.wait_ready("shell", 3).await;
    wait_ready_or_explain(&env, "js", 2).await;

    // Every producer submits several tasks to one pool and waits for each result; the
    // Python and Node ones use both pools, and each has one task that fails once.
    let redis_url = env.redis.url();
    let producers = vec![
        Producer::new("python", "shell", 5, true),
        Producer::new("python", "js", 4, false),
        Producer::new("node", "shell", 4, false),
        Producer::new("node", "js", 5, true),
        Producer::new("go", "shell", 3, false),
        Producer::new("rust", "js", 3, false),
    ];
    let examples = repo_root().join("examples/producers");
    let mut running = Vec::new();
    for p in producers {
        let mut cmd = match p.language {
            "python" => {
                let mut c = tokio::process::Command::new(&tools.python);
                c.arg(examples.join("python/produce.py"));
                c
            }
            "node" => {
                let mut c = tokio::process::Command::new("node");
                c.arg(examples.join("node/produce.js"));
                c
            }
            "go" => tokio::process::Command::new(&tools.go_producer),
            _ => tokio::process::Command::new(&rust_producer),
        };
        cmd.args(&p.payloads)
            .env("WORKPOOL_REDIS_URL", &redis_url)
            .env("WORKPOOL_STREAM", p.pool)
            .env("PYTHONPATH", repo_root().join("clients/python/src"))
            .env("NODE_PATH", &tools.node_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{} producer: {e}", p.language));
        running.push((p, child));
    }

    // Each producer got one result per task, with its handler's output (the fail-once
    // task: dead, with the handler's reason).
    let mut printed: BTreeMap<(&str, &str), Vec<(String, Printed)>> = BTreeMap::new();
    for (p, child) in running {
        let out = tokio::time::timeout(RESULTS_WITHIN, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the {} producer for {} did not finish", p.language, p.pool))
            .expect("producer output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the {} producer for {}: {}\n{stdout}\n{}",
            p.language,
            p.pool,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Printed> = stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                Printed {
                    task_id: v["task_id"].as_str().expect("task_id").to_string(),
                    state: v["state"].as_str().expect("state").to_string(),
                    output: v["output"].as_str().map(str::to_string),
                    error: v["error"].as_str().map(str::to_string),
                }
            })
            .collect();
        assert_eq!(
            lines.len(),
            p.payloads.len(),
            "the {} producer for {} printed one result per task: {stdout}",
            p.language,
            p.pool
        );
        let pairs: Vec<(String, Printed)> = p.payloads.iter().cloned().zip(lines).collect();
        for (payload, r) in &pairs {
            if payload.contains(FAIL_ONCE) {
                assert_eq!(r.state, "dead", "{} {payload}: {r:?}", p.language);
                let error = r.error.as_deref().unwrap_or_default();
                assert!(
                    error.contains("permanent failure")
                        && error.contains("refused on its first run"),
                    "{} {payload}: {r:?}",
                    p.language
                );
            } else {
                assert_eq!(r.state, "done", "{} {payload}: {r:?}", p.language);
                assert_eq!(
                    r.output.as_deref(),
                    Some(expected_output(p.pool, payload).as_str()),
                    "{} {payload}: {r:?}",
                    p.language
                );
            }
        }
        printed.insert((p.language, p.pool), pairs);
    }
    let all: Vec<(&str, &String, &Printed)> = printed
        .iter()
        .flat_map(|((_, pool), pairs)| pairs.iter().map(move |(p, r)| (*pool, p, r)))
        .collect();
    let task_ids: BTreeSet<(&str, &str)> = all
        .iter()
        .map(|(pool, _, r)| (*pool, &*r.task_id))
        .collect();
    assert_eq!(task_ids.len(), all.len(), "task ids are distinct");

    // The Go client lists exactly one dead letter per pool: the fail-once task, with the
    // handler's reason.
    let admin_url = env.redis.url();
    let mut dead = BTreeMap::new();
    for (pool, producer, why) in [
        ("shell", "python", "exit status 100"),
        ("js", "node", "HTTP 422"),
    ] {
        let (payload, printed) = printed[&(producer, pool)]
            .iter()
            .find(|(p, _)| p.contains(FAIL_ONCE))
            .expect("fail-once task");
        let listed = tools.go_dead_letters(&admin_url, pool);
        assert_eq!(listed.len(), 1, "{pool}'s dead letters: {listed:?}");
        let d = &listed[0];
        assert_eq!(d["payload"], json!(payload), "{d}");
        assert_eq!(d["task_id"], json!(printed.task_id), "{d}");
        assert_eq!(d["deliveries"], json!(1), "{d}");
        let error = d["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("permanent failure")
                && error.contains(why)
                && error.contains("refused on its first run"),
            "{pool}'s dead letter: {d}"
        );
        let reference = d["ref"].as_str().expect("ref").to_string();
        dead.insert(pool, (reference, payload.clone(), printed.task_id.clone()));
    }

    // `kubectl workpool retry` (the plugin found on PATH by the real kubectl), as a
    // ServiceAccount that may only get these two WorkPools.
    let ns = env.ns.clone();
    for obj in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "queue-admin", "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "queue-admin", "namespace": ns},
               "rules": [{"apiGroups": ["workpool.dev"], "resources": ["workpools"],
                          "verbs": ["get"], "resourceNames": ["shell", "js"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "queue-admin", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "queue-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "queue-admin",
                             "namespace": ns}]}),
    ] {
        env.cluster.apply_object(&obj).await.expect("rbac object");
    }
    let kubeconfig = env
        .cluster
        .service_account_kubeconfig(&ns, "queue-admin")
        .await
        .expect("token");
    let path = std::env::join_paths(std::iter::once(bin_dir()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let client_layout = |pool: &str| Layout::new(pool, pool);
    for (pool, (reference, payload, task_id)) in &dead {
        let said = run(Command::new(kubectl_path())
            .args([
                "workpool",
                "retry",
                pool,
                reference,
                "-n",
                &ns,
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .env("PATH", &path)
            .env_remove("KUBECONFIG"))
        .unwrap_or_else(|e| panic!("kubectl workpool retry: {e}"));
        let new_entry = said
            .lines()
            .find_map(|l| l.strip_prefix(&format!("retried {reference} -> ")))
            .unwrap_or_else(|| panic!("kubectl workpool retry said: {said}"))
            .trim()
            .to_string();

        // It left the dead-letter stream ...
        let listed = tools.go_dead_letters(&admin_url, pool);
        assert!(
            listed.is_empty(),
            "{pool}'s dead letters after the retry: {listed:?}"
        );

        // ... and completes, under the task id its producer printed: these tasks were
        // submitted without an `id`, so the task id is the first entry id, which the
        // retried entry keeps (docs/protocol.md 6 and 8).
        let rust = Pool::connect_url(&admin_url, &Tls::none(), client_layout(pool))
            .await
            .expect("rust client");
        assert_ne!(task_id, &new_entry, "the retry added a new entry");
        let result = rust
            .wait_for(0, task_id, RESULTS_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("the retried {pool} task {task_id} ({new_entry}): {e}"));
        assert_eq!(
            result.task_id.as_deref(),
            Some(task_id.as_str()),
            "{result:?}"
        );
        assert!(
            rust.result(0, &new_entry).await.expect("result").is_none(),
            "no record under the retried entry's own id"
        );
        assert_eq!(result.state, "done", "{pool}: {result:?}");
        assert_eq!(
            result.entry_id.as_deref(),
            Some(new_entry.as_str()),
            "{result:?}"
        );
        assert_eq!(result.deliveries, Some(1), "{result:?}");
        assert_eq!(
            result.output.as_deref(),
            Some(expected_output(pool, payload).as_bytes()),
            "{result:?}"
        );
    }

    // Exactly once: every task ran once (the fail-once tasks twice: the refused run and
    // the retried one), on one of its pool's pods, and its record says one delivery.
    for pool in ["shell", "js"] {
        let runs_text =
            std::fs::read_to_string(env.out_dir().join(format!("{pool}.runs"))).unwrap_or_default();
        let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
        for line in runs_text.lines().filter(|l| !l.is_empty()) {
            *runs.entry(line).or_default() += 1;
        }
        let pods: BTreeSet<String> = env
            .pool_pods(pool, true)
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let rust = Pool::connect_url(&admin_url, &Tls::none(), client_layout(pool))
            .await
            .expect("rust client");
        let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
        let mine: Vec<&(&str, &String, &Printed)> =
            all.iter().filter(|(p, _, _)| *p == pool).collect();
        for (_, payload, printed) in &mine {
            let want = if payload.contains(FAIL_ONCE) { 2 } else { 1 };
            assert_eq!(
                runs.get(payload.as_str()).copied().unwrap_or(0),
                want,
                "runs of {payload} in {pool}: {runs:?}"
            );
            let record = rust
                .result(0, &printed.task_id)
                .await
                .expect("result")
                .unwrap_or_else(|| panic!("no result for {payload} in {pool}"));
            assert_eq!(record.state, "done", "{payload}: {record:?}");
            assert_eq!(record.deliveries, Some(1), "{payload}: {record:?}");
            let consumer = record.consumer.clone().unwrap_or_default();
            assert!(
                pods.contains(&consumer),
                "{payload} ran on {consumer}, not one of {pods:?}"
            );
            *by_pod.entry(consumer).or_default() += 1;
        }
        assert_eq!(
            runs.values().sum::<usize>(),
            mine.len() + 1,
            "{pool} ran nothing else: {runs:?}"
        );
        eprintln!("{pool}: {} tasks on pods {by_pod:?}", mine.len());
    }
}
