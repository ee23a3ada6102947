//! `kubectl-workpool` against the real test control plane (RBAC enforced) and real
//! redis-servers: it reads the WorkPool and its Secret with the caller's own credentials
//! (ServiceAccount tokens with exactly the rights each case grants), and says clearly
//! when it may not read the Secret or cannot reach Redis.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value as J, json};
use workpool_client::target::Tls;
use workpool_client::{Layout, Pool};
use workpool_tests::cluster::TestCluster;
use workpool_worker::queue::Queue;
use workpool_worker::testing::{RedisServer, free_port};

type Fields = Vec<(String, String)>;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-workpool");

fn plugin(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl-workpool")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("kubectl-workpool said: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A WorkPool (never reconciled: no operator runs here) whose Redis URL is in Secret
/// `secret`, with 2 partitions.
async fn pool_with_secret(cluster: &TestCluster, name: &str, secret: &str, url: &str) {
    let ns = cluster.namespace();
    cluster
        .apply_object(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret, "namespace": ns},
            "stringData": {"url": url}
        }))
        .await
        .expect("secret");
    cluster
        .apply_object(&json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "queue": {"redis": {"urlSecretRef": {"name": secret, "key": "url"}, "partitions": 2}},
                "replicas": 0,
                "template": {"spec": {"containers": [{"name": "worker", "image": "worker:test", "args": ["run"]}]}}
            }
        }))
        .await
        .expect("workpool");
}

/// A ServiceAccount bound to a Role with `rules`, and a kubeconfig that is it.
async fn caller(cluster: &TestCluster, name: &str, rules: J) -> std::path::PathBuf {
    let ns = cluster.namespace();
    for obj in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": ns}, "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}),
    ] {
        cluster.apply_object(&obj).await.expect("rbac object");
    }
    cluster
        .service_account_kubeconfig(ns, name)
        .await
        .expect("token kubeconfig")
}

/// Dead-letters `n` tasks of every partition the way the worker does (its own read and
/// dead-letter script).
async fn dead_letter_all(url: &str, layout: &Layout) -> usize {
    let mut c = workpool_worker::queue::connect(url, Some(Duration::from_secs(10)))
        .await
        .expect("connect");
    let mut n = 0;
    for i in 0..layout.partitions() {
        let q = Queue::new(layout.partition_stream(i), layout.group())
            .with_dead_letter_stream(layout.dead_letter_stream(i));
        q.ensure_group(&mut c).await.expect("group");
        let entries = q
            .read(&mut c, "pod-1", 100, Duration::from_millis(10))
            .await
            .expect("read");
        for e in entries {
            q.dead_letter(&mut c, &e, "pod-1", "permanent failure: HTTP 422")
                .await
                .expect("dead letter");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_submit_dead_letters_and_retry_with_the_callers_rights() {
    let cluster = TestCluster::start().await.expect("test cluster");
    let ns = cluster.namespace().to_string();
    let redis = RedisServer::start().expect("redis-server");
    pool_with_secret(&cluster, "thumbs", "thumbs-redis", &redis.url()).await;
    // Least privilege: read this pool and this one Secret, nothing else.
    let kc = caller(
        &cluster,
        "producer",
        json!([
            {"apiGroups": ["workpool.dev"], "resources": ["workpools"], "verbs": ["get"], "resourceNames": ["thumbs"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["thumbs-redis"]}
        ]),
    )
    .await;

    // submit: several tasks, spread over both partitions, with ids.
    let out = ok(&plugin(
        &kc,
        &ns,
        &[
            "submit",
            "thumbs",
            "--payload",
            r#"{"image":"a.png"}"#,
            "--count",
            "6",
            "--id",
            "img",
            "--json",
        ],
    ));
    let subs: Vec<J> = serde_json::from_str(&out).expect("submit --json");
    assert_eq!(subs.len(), 6);
    let parts: std::collections::BTreeSet<u64> = subs
        .iter()
        .map(|s| s["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(parts.len(), 2, "round robin over both partitions");
    let layout = Layout::new("thumbs", "thumbs").with_partitions(2);
    let client = Pool::connect_url(&redis.url(), &Tls::none(), layout.clone())
        .await
        .expect("client");
    let st = client.stats().await.unwrap();
    assert_eq!(st.stream_length, 6);
    let first = client
        .dead_letters(&Default::default(), None, false)
        .await
        .unwrap();
    assert!(first.is_empty());
    let mut c = client.connection();
    let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg("thumbs")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        entries
            .iter()
            .all(|(_, f)| f[0] == ("payload".into(), r#"{"image":"a.png"}"#.into()))
    );

    // stats: the same figures as the client reads (JSON) and the text form.
    let json_stats: J =
        serde_json::from_str(&ok(&plugin(&kc, &ns, &["stats", "thumbs", "--json"]))).unwrap();
    assert_eq!(json_stats["backlog"], 6);
    assert_eq!(json_stats["partitions"].as_array().unwrap().len(), 2);
    let text = ok(&plugin(&kc, &ns, &["stats", "thumbs"]));
    assert!(text.contains("backlog:       6"), "{text}");

    // dead letters, listed and retried.
    assert_eq!(dead_letter_all(&redis.url(), &layout).await, 6);
    let listed: Vec<J> = serde_json::from_str(&ok(&plugin(
        &kc,
        &ns,
        &["dead-letters", "thumbs", "--json"],
    )))
    .unwrap();
    assert_eq!(listed.len(), 6);
    assert!(
        listed
            .iter()
            .all(|d| d["error"] == "permanent failure: HTTP 422" && d["consumer"] == "pod-1")
    );
    let one = listed[0]["ref"].as_str().unwrap();
    let text = ok(&plugin(&kc, &ns, &["retry", "thumbs", one]));
    assert!(text.contains("retried 1"), "{text}");
    let again = failed(&plugin(&kc, &ns, &["retry", "thumbs", one]));
    assert!(
        again.contains("1 of 1 dead letters were not there"),
        "{again}"
    );
    let text = ok(&plugin(&kc, &ns, &["retry", "thumbs", "--all"]));
    assert!(text.contains("retried 5"), "{text}");
    let st = client.stats().await.unwrap();
    assert_eq!((st.dead_letters, st.stream_length), (0, 6));
    let mut ids: Vec<String> = Vec::new();
    for i in 0..2 {
        let rows: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg(layout.partition_stream(i))
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        ids.extend(
            rows.into_iter()
                .filter_map(|(_, f)| f.into_iter().find(|(k, _)| k == "id").map(|(_, v)| v)),
        );
    }
    ids.sort();
    assert_eq!(
        ids,
        (0..6).map(|i| format!("img-{i}")).collect::<Vec<_>>(),
        "each task back once, with its id"
    );

    // Another pool of this caller is not readable: its rights name only `thumbs`.
    pool_with_secret(&cluster, "other", "other-redis", &redis.url()).await;
    let err = failed(&plugin(&kc, &ns, &["stats", "other"]));
    assert!(
        err.contains(&format!("you may not read WorkPool {ns}/other")),
        "{err}"
    );
    let err = failed(&plugin(&kc, &ns, &["stats", "missing"]));
    assert!(
        err.contains("you may not read WorkPool") || err.contains("not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_may_not_read_the_secret_or_reach_redis_is_told_so() {
    let cluster = TestCluster::start().await.expect("test cluster");
    let ns = cluster.namespace().to_string();
    let redis = RedisServer::start().expect("redis-server");
    pool_with_secret(&cluster, "jobs", "jobs-redis", &redis.url()).await;
    // May read the pool, not its Secret.
    let kc = caller(
        &cluster,
        "viewer",
        json!([{"apiGroups": ["workpool.dev"], "resources": ["workpools"], "verbs": ["get", "list"]}]),
    )
    .await;
    for args in [
        vec!["stats", "jobs"],
        vec!["dead-letters", "jobs"],
        vec!["retry", "jobs", "--all"],
        vec!["submit", "jobs", "--payload", "{}"],
    ] {
        let err = failed(&plugin(&kc, &ns, &args));
        assert!(
            err.contains(&format!(
                "cannot read the Redis URL of WorkPool {ns}/jobs from its Secret"
            )) && err.contains("you may not read Secret \"jobs-redis\"")
                && err.contains("forbidden"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        Pool::connect_url(
            &redis.url(),
            &Tls::none(),
            Layout::new("jobs", "jobs").with_partitions(2)
        )
        .await
        .unwrap()
        .stats()
        .await
        .unwrap()
        .stream_length,
        0,
        "nothing was submitted"
    );

    // Redis unreachable (nothing listens on the Secret's URL): said, without the password.
    let port = free_port().unwrap();
    pool_with_secret(
        &cluster,
        "down",
        "down-redis",
        &format!("redis://:hunter2@127.0.0.1:{port}/0"),
    )
    .await;
    let admin = cluster.kubeconfig_path().to_path_buf();
    let err = failed(&plugin(&admin, &ns, &["stats", "down"]));
    assert!(
        err.contains(&format!("cannot reach the Redis of WorkPool {ns}/down")),
        "{err}"
    );
    assert!(err.contains("Redis is unreachable"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // A pool that does not exist.
    let err = failed(&plugin(&admin, &ns, &["stats", "nope"]));
    assert!(
        err.contains(&format!("WorkPool {ns}/nope not found")),
        "{err}"
    );
}
