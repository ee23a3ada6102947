//! TLS with a private CA and client certificates (mTLS, `tls-auth-clients yes`) on every
//! mode: one Redis, a Sentinel set (sentinels and replication over TLS too) and a Redis
//! Cluster (cluster bus over TLS too). `run`, `submit` and `stats` connect with
//! `--redis-ca-file`, `--redis-cert-file` and `--redis-key-file`; a wrong CA or a missing
//! client certificate is a clear error naming the URL without its password, never a
//! panic.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{BIN, Worker, wait_until};
use workpool_worker::queue::Pool;
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::{
    ClusterOptions, RedisCluster, RedisServer, SentinelOptions, SentinelSet, TestCa,
};

fn tls_args(ca: &TestCa) -> Vec<String> {
    vec![
        "--redis-ca-file".into(),
        ca.ca_file().to_string_lossy().into_owned(),
        "--redis-cert-file".into(),
        ca.client_cert_file().to_string_lossy().into_owned(),
        "--redis-key-file".into(),
        ca.client_key_file().to_string_lossy().into_owned(),
    ]
}

fn cli(args: &[String]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// submit 100 tasks, a worker drains them, stats shows an empty queue: all over TLS.
async fn drain_over_tls(url: &str, ca: &TestCa, partitions: &str) {
    let tls = tls_args(ca);
    let base = |cmd: &str| -> Vec<String> {
        [
            strs(&[
                cmd,
                "--redis-url",
                url,
                "--stream",
                "tls",
                "--partitions",
                partitions,
            ]),
            tls.clone(),
        ]
        .concat()
    };
    let out = cli(&[base("submit"), strs(&["--payload", "{}", "--count", "100"])].concat());
    assert!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args: Vec<String> = strs(&["--partitions", partitions]);
    args.extend(tls.clone());
    args.extend(strs(&["--builtin", "noop"]));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Worker::spawn(url, "tls", "pool", "w1", &arg_refs);
    wait_until(Duration::from_secs(60), "drained over TLS", || async {
        let out = cli(&[base("stats"), strs(&["--group", "pool", "--json"])].concat());
        assert!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        st["backlog"] == 0 && st["pending"] == 0 && st["group_exists"] == true
    })
    .await;
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"succeeded\"")
            .await,
        100.0
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_on_one_redis_and_clear_errors_for_a_wrong_ca_or_no_client_certificate() {
    let redis = RedisServer::start_mtls().expect("redis with mTLS");
    let ca = redis.ca().expect("ca").clone();
    let url = redis.tls_url().expect("tls url");
    drain_over_tls(&url, &ca, "1").await;

    // The library: the CA and the client certificate reach Redis.
    let target = Target::new(&url, &ca.client_tls().expect("tls")).expect("target");
    let c = target
        .connect(Some(Duration::from_secs(5)))
        .await
        .expect("mTLS connect");
    Pool::new("tls", "pool")
        .stats(&c)
        .await
        .expect("stats over mTLS");

    // A password in the URL never shows; the URL otherwise does.
    let with_pw = url.replace("rediss://", "rediss://:hunter2@");
    let other = TestCa::new().expect("another CA");
    let out = cli(&[
        strs(&[
            "stats",
            "--redis-url",
            &with_pw,
            "--stream",
            "tls",
            "--group",
            "pool",
        ]),
        tls_args(&other),
    ]
    .concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to redis at rediss://***@localhost:"),
        "{err}"
    );
    assert!(
        err.contains("certificate"),
        "the error says what failed: {err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The right CA but no client certificate: the server refuses the handshake.
    let out = cli(&strs(&[
        "stats",
        "--redis-url",
        &url,
        "--stream",
        "tls",
        "--group",
        "pool",
        "--redis-ca-file",
        &ca.ca_file().to_string_lossy(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to redis at rediss://localhost:"),
        "{err}"
    );

    // A certificate without its key, a CA that is not PEM: refused before connecting.
    let out = cli(&strs(&[
        "stats",
        "--redis-url",
        &url,
        "--stream",
        "tls",
        "--group",
        "pool",
        "--redis-cert-file",
        &ca.client_cert_file().to_string_lossy(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs its private key"), "{err}");
    let out = cli(&strs(&[
        "stats",
        "--redis-url",
        &redis.url(),
        "--stream",
        "tls",
        "--group",
        "pool",
        "--redis-ca-file",
        &ca.ca_file().to_string_lossy(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must use rediss://"),
        "a CA with a plain URL: {err}"
    );

    // A worker with the wrong CA keeps trying, is not ready, says why, never panics.
    let mut args = tls_args(&other);
    args.extend(strs(&["--builtin", "noop"]));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Worker::spawn(&with_pw, "tls", "pool", "w2", &arg_refs);
    let addr = w.metrics_addr().await;
    wait_until(
        Duration::from_secs(20),
        "the worker logs the TLS failure",
        || async {
            w.logs().contains("cannot connect to redis") && w.logs().contains("certificate")
        },
    )
    .await;
    assert_eq!(common::http_get(addr, "/readyz").0, 503);
    assert!(w.is_running());
    assert!(!w.logs().contains("hunter2"));
    assert!(w.logs().contains("rediss://***@localhost"), "{}", w.logs());
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_through_sentinels_and_on_a_cluster() {
    let ca = Arc::new(TestCa::new().expect("ca"));
    let set = SentinelSet::start(SentinelOptions {
        replicas: 1,
        tls: Some(ca.clone()),
        tls_auth_clients: true,
        ..SentinelOptions::default()
    })
    .expect("sentinel set over TLS");
    let url = set.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    drain_over_tls(&url, &ca, "2").await;

    let cluster = RedisCluster::start(ClusterOptions {
        tls: Some(ca.clone()),
        tls_auth_clients: true,
        ..ClusterOptions::default()
    })
    .expect("cluster over TLS");
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    drain_over_tls(&url, &ca, "3").await;

    // Without the client certificate the cluster refuses the library too, with a TLS
    // error, not a panic.
    let target = Target::new(
        &url,
        &Tls::with_ca(std::fs::read(ca.ca_file()).expect("ca")),
    )
    .expect("target");
    let e = match target.connect(Some(Duration::from_secs(5))).await {
        Ok(c) => Pool::new("tls", "pool")
            .with_cluster(true)
            .stats(&c)
            .await
            .expect_err("no client certificate"),
        Err(e) => e,
    };
    assert!(e.is_connection_error(), "{e}");
}
