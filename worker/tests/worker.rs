//! The `workpool-worker` binary against a real redis-server: delivery, retries, dead
//! letters, reclaim after SIGKILL, lease renewal, poison tasks, graceful drain, Redis
//! restarts, malformed payloads, bad flags, metrics and readiness.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Worker, conn, enqueue, http_get, read_lines, side_file, stats, wait_until};
use nix::sys::signal::Signal;
use workpool_worker::queue::{self, Queue};
use workpool_worker::testing::{Persistence, RedisServer};

fn submit(url: &str, stream: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(common::BIN)
        .args(["submit", "--redis-url", url, "--stream", stream])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn submit");
    if let Some(input) = stdin
        && let Some(mut s) = child.stdin.take()
    {
        s.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("submit output")
}

async fn dead_letters(url: &str, stream: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut c = conn(url).await;
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE dead letters");
    v.into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_all_tasks_and_serves_metrics_and_health() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let out = submit(
        &url,
        "jobs",
        &["--payload", r#"{"k":1}"#, "--count", "3000"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "enqueued 3000");
    let q = Queue::new("jobs", "pool");
    assert_eq!(stats(&url, &q).await.backlog, 3000);

    let w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &["--batch", "200", "--builtin", "noop"],
    );
    wait_until(Duration::from_secs(30), "queue drained", || async {
        let st = stats(&url, &q).await;
        st.backlog == 0 && st.stream_length == 0
    })
    .await;
    let st = stats(&url, &q).await;
    assert_eq!((st.pending, st.dead_letters), (0, 0));
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"succeeded\"")
            .await,
        3000.0
    );
    let addr = w.metrics_addr().await;
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "workpool_worker_tasks_total",
        "workpool_worker_task_duration_seconds_bucket",
        "workpool_worker_in_flight_tasks",
        "workpool_worker_reclaimed_tasks_total",
        "workpool_worker_ready",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert_eq!(w.metric("workpool_worker_in_flight_tasks", "").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tasks_are_retried_then_dead_lettered() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let mut c = conn(&url).await;
    let ids = q
        .enqueue(
            &mut c,
            &[
                workpool_worker::queue::NewTask {
                    payload: b"{\"a\":1}",
                    id: Some("t1"),
                    attempt: None,
                },
                workpool_worker::queue::NewTask {
                    payload: b"{\"a\":2}",
                    id: Some("t2"),
                    attempt: None,
                },
            ],
        )
        .await
        .expect("enqueue");
    let w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &[
            "--max-deliveries",
            "3",
            "--retry-backoff",
            "0.05",
            "--builtin",
            "fail",
        ],
    );
    wait_until(Duration::from_secs(30), "2 dead letters", || async {
        stats(&url, &q).await.dead_letters == 2
    })
    .await;
    let st = stats(&url, &q).await;
    assert_eq!((st.backlog, st.pending, st.stream_length), (0, 0, 0));
    let dl = dead_letters(&url, "jobs:dead").await;
    assert_eq!(dl.len(), 2);
    for (i, d) in dl.iter().enumerate() {
        let want_id = ids.iter().map(|i| i.to_string()).collect::<HashSet<_>>();
        assert!(want_id.contains(&d["original_id"]), "{d:?}");
        assert_eq!(d["deliveries"], "3", "{d:?}");
        assert!(d["error"].contains("failed 3 times"), "{d:?}");
        assert!(
            d["error"].contains("the fail handler always fails"),
            "{d:?}"
        );
        assert!(d["payload"].starts_with("{\"a\":"), "{d:?}");
        assert!(d["id"] == "t1" || d["id"] == "t2", "{d:?} {i}");
        assert_eq!(d["consumer"], "w1");
    }
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"failed\"")
            .await,
        6.0
    );
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"retried\"")
            .await,
        4.0
    );
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"dead_lettered\"")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_go_to_dead_letters_with_the_reason() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let mut c = conn(&url).await;
    let no_payload: String = redis::cmd("XADD")
        .arg("jobs")
        .arg("*")
        .arg("body")
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("xadd");
    let ids = enqueue(&url, &q, &["not json", r#"{"ms": "soon"}"#, r#"{"ms": 1}"#]).await;
    let w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &["--max-deliveries", "5", "--builtin", "sleep"],
    );
    wait_until(
        Duration::from_secs(20),
        "3 dead letters and 1 success",
        || async {
            let st = stats(&url, &q).await;
            st.dead_letters == 3 && st.stream_length == 0
        },
    )
    .await;
    let dl = dead_letters(&url, "jobs:dead").await;
    let by_id: std::collections::HashMap<&str, &std::collections::HashMap<String, String>> =
        dl.iter().map(|d| (d["original_id"].as_str(), d)).collect();
    let d = by_id[no_payload.as_str()];
    assert!(d["error"].contains("no `payload` field"), "{d:?}");
    assert_eq!(d["body"], "x");
    assert!(!d.contains_key("payload"));
    let d = by_id[ids[0].to_string().as_str()];
    assert!(d["error"].contains("JSON"), "{d:?}");
    assert_eq!(d["payload"], "not json");
    assert_eq!(d["deliveries"], "1", "malformed tasks are not retried");
    assert!(by_id.contains_key(ids[1].to_string().as_str()));
    assert_eq!(
        w.metric("workpool_worker_tasks_total", "outcome=\"succeeded\"")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_sigkilled_worker_are_reclaimed_and_none_is_lost() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let done = side_file(&dir, "done");
    let q = Queue::new("jobs", "pool");
    let payloads: Vec<String> = (0..200).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    let ids = enqueue(&url, &q, &refs).await;
    let script = format!("cat > /dev/null; sleep 0.1; echo \"$WORKPOOL_TASK_ID\" >> {done}");
    let args = [
        "--visibility-timeout",
        "2",
        "--concurrency",
        "6",
        "--exec",
        "sh",
        "-c",
        script.as_str(),
    ];
    let mut victim = Worker::spawn(&url, "jobs", "pool", "victim", &args);
    let w2 = Worker::spawn(&url, "jobs", "pool", "w2", &args);
    let w3 = Worker::spawn(&url, "jobs", "pool", "w3", &args);
    // Kill the victim while it holds tasks.
    wait_until(Duration::from_secs(20), "victim holds tasks", || async {
        stats(&url, &q)
            .await
            .consumers
            .iter()
            .any(|c| c.name == "victim" && c.pending >= 3)
    })
    .await;
    victim.signal(Signal::SIGKILL);
    victim.wait_exit(Duration::from_secs(5)).await;
    let held = stats(&url, &q)
        .await
        .consumers
        .iter()
        .find(|c| c.name == "victim")
        .map(|c| c.pending)
        .unwrap_or(0);
    assert!(held > 0, "the victim died holding tasks");
    wait_until(
        Duration::from_secs(60),
        "all tasks acknowledged",
        || async {
            let st = stats(&url, &q).await;
            st.stream_length == 0 && st.pending == 0
        },
    )
    .await;
    let st = stats(&url, &q).await;
    assert_eq!(st.dead_letters, 0);
    let completed: HashSet<String> = read_lines(&done).into_iter().collect();
    for id in &ids {
        assert!(
            completed.contains(&id.to_string()),
            "task {id} never completed"
        );
    }
    let reclaimed = w2.metric("workpool_worker_reclaimed_tasks_total", "").await
        + w3.metric("workpool_worker_reclaimed_tasks_total", "").await;
    assert!(
        reclaimed >= held as f64,
        "reclaimed {reclaimed} < held {held}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_renews_its_lease_so_long_tasks_run_once() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = side_file(&dir, "runs");
    let q = Queue::new("jobs", "pool");
    enqueue(&url, &q, &["{}"]).await;
    // The task takes 4x the visibility timeout.
    let script =
        format!("echo \"start $WORKPOOL_DELIVERY\" >> {runs}; sleep 4; echo end >> {runs}");
    let args = [
        "--visibility-timeout",
        "1",
        "--exec",
        "sh",
        "-c",
        script.as_str(),
    ];
    let w1 = Worker::spawn(&url, "jobs", "pool", "w1", &args);
    let w2 = Worker::spawn(&url, "jobs", "pool", "w2", &args);
    wait_until(Duration::from_secs(30), "task done", || async {
        stats(&url, &q).await.stream_length == 0
    })
    .await;
    assert_eq!(
        read_lines(&runs),
        vec!["start 1".to_string(), "end".to_string()]
    );
    assert_eq!(
        w1.metric("workpool_worker_reclaimed_tasks_total", "").await,
        0.0
    );
    assert_eq!(
        w2.metric("workpool_worker_reclaimed_tasks_total", "").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_that_kills_its_worker_reaches_dead_letters() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = side_file(&dir, "runs");
    let q = Queue::new("jobs", "pool");
    let ids = enqueue(&url, &q, &["poison"]).await;
    // The handler kills the worker (its parent) every time.
    let script = format!("echo \"$WORKPOOL_DELIVERY\" >> {runs}; kill -9 $PPID; sleep 5");
    let args = [
        "--visibility-timeout",
        "1",
        "--max-deliveries",
        "2",
        "--exec",
        "sh",
        "-c",
        script.as_str(),
    ];
    // A supervisor loop, like a kubelet restarting the pod.
    let mut restarts = 0;
    let mut n = 0;
    let mut w = Worker::spawn(&url, "jobs", "pool", "w0", &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        if stats(&url, &q).await.dead_letters == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "poison task never reached dead letters"
        );
        if !w.is_running() {
            restarts += 1;
            n += 1;
            w = Worker::spawn(&url, "jobs", "pool", &format!("w{n}"), &args);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(restarts, 2, "the worker died once per allowed delivery");
    assert_eq!(read_lines(&runs), vec!["1".to_string(), "2".to_string()]);
    let dl = dead_letters(&url, "jobs:dead").await;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0]["original_id"], ids[0].to_string());
    assert_eq!(dl[0]["payload"], "poison");
    assert_eq!(dl[0]["deliveries"], "3");
    assert!(dl[0]["error"].contains("without completing"), "{:?}", dl[0]);
    let st = stats(&url, &q).await;
    assert_eq!((st.stream_length, st.pending), (0, 0));
    assert!(w.is_running(), "the last worker is alive and well");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_tasks_and_exits_zero() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let done = side_file(&dir, "done");
    let q = Queue::new("jobs", "pool");
    let payloads: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    enqueue(&url, &q, &refs).await;
    let script = format!("sleep 1.5; echo \"$WORKPOOL_TASK_ID\" >> {done}");
    let mut w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &[
            "--concurrency",
            "4",
            "--shutdown-grace",
            "20",
            "--exec",
            "sh",
            "-c",
            script.as_str(),
        ],
    );
    wait_until(Duration::from_secs(20), "4 tasks in flight", || async {
        stats(&url, &q).await.pending == 4
    })
    .await;
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit code after SIGTERM; logs:\n{}",
        w.logs()
    );
    assert_eq!(read_lines(&done).len(), 4, "the 4 in-flight tasks finished");
    let st = stats(&url, &q).await;
    assert_eq!(st.pending, 0, "nothing left pending");
    assert_eq!(
        st.stream_length, 6,
        "the other tasks wait for the next worker"
    );
    assert_eq!(st.lag, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_unfinished_after_the_grace_period_are_handed_back() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let done = side_file(&dir, "done");
    let q = Queue::new("jobs", "pool");
    enqueue(&url, &q, &["{}"]).await;
    // Slow on the first delivery only.
    let script = format!(
        "if [ \"$WORKPOOL_DELIVERY\" = 1 ]; then sleep 30; fi; echo \"$WORKPOOL_DELIVERY\" >> {done}"
    );
    let args = [
        "--visibility-timeout",
        "60",
        "--shutdown-grace",
        "0.5",
        "--exec",
        "sh",
        "-c",
        script.as_str(),
    ];
    let mut w = Worker::spawn(&url, "jobs", "pool", "w1", &args);
    wait_until(Duration::from_secs(20), "task in flight", || async {
        stats(&url, &q).await.pending == 1
    })
    .await;
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", w.logs());
    let mut c = conn(&url).await;
    let p = q.pending_entries(&mut c, 10, None).await.expect("pending");
    assert_eq!(
        p.len(),
        1,
        "the unfinished task stays pending (handed back)"
    );
    assert!(
        p[0].idle_ms > 60_000,
        "handed back for immediate reclaim: idle {}",
        p[0].idle_ms
    );
    // A new worker takes it at once although the visibility timeout is a minute.
    let _w2 = Worker::spawn(&url, "jobs", "pool", "w2", &args);
    wait_until(
        Duration::from_secs(15),
        "task done by the next worker",
        || async { stats(&url, &q).await.stream_length == 0 },
    )
    .await;
    assert_eq!(read_lines(&done), vec!["2".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_a_redis_restart_and_lose_nothing() {
    // AOF with fsync on every write: the stream, group and pending lists survive a
    // SIGKILL of redis-server.
    let mut redis = RedisServer::start_with(Persistence::AppendOnlyAlways).expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let payloads: Vec<String> = (0..400).map(|_| r#"{"ms": 20}"#.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    enqueue(&url, &q, &refs).await;
    let args = [
        "--visibility-timeout",
        "2",
        "--concurrency",
        "10",
        "--builtin",
        "sleep",
    ];
    let w1 = Worker::spawn(&url, "jobs", "pool", "w1", &args);
    let w2 = Worker::spawn(&url, "jobs", "pool", "w2", &args);
    let addr = w1.metrics_addr().await;
    wait_until(Duration::from_secs(20), "some progress", || async {
        stats(&url, &q).await.stream_length < 350
    })
    .await;
    assert_eq!(http_get(addr, "/readyz").0, 200);
    redis.stop();
    wait_until(
        Duration::from_secs(15),
        "not ready while redis is down",
        || async { http_get(addr, "/readyz").0 == 503 },
    )
    .await;
    assert_eq!(
        http_get(addr, "/healthz").0,
        200,
        "alive while redis is down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().expect("restart redis");
    wait_until(
        Duration::from_secs(60),
        "drained after the restart",
        || async {
            let st = stats(&url, &q).await;
            st.stream_length == 0 && st.pending == 0
        },
    )
    .await;
    wait_until(Duration::from_secs(15), "ready again", || async {
        http_get(addr, "/readyz").0 == 200
    })
    .await;
    let st = stats(&url, &q).await;
    assert_eq!(st.dead_letters, 0);
    let ok = w1
        .metric("workpool_worker_tasks_total", "outcome=\"succeeded\"")
        .await
        + w2.metric("workpool_worker_tasks_total", "outcome=\"succeeded\"")
            .await;
    assert!(ok >= 400.0, "succeeded {ok}");
    for w in [&w1, &w2] {
        let logs = w.logs();
        assert!(
            logs.contains("redis unavailable"),
            "{} logged the outage",
            w.consumer
        );
        assert!(
            logs.contains("reconnected to redis"),
            "{} logged the reconnect",
            w.consumer
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_redis_is_unreachable_and_logs_each_attempt() {
    let port = workpool_worker::testing::free_port().expect("port");
    let url = format!("redis://127.0.0.1:{port}/");
    let mut w = Worker::spawn(&url, "jobs", "pool", "w1", &["--builtin", "noop"]);
    let addr = w.metrics_addr().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(http_get(addr, "/readyz").0, 503);
    assert_eq!(http_get(addr, "/healthz").0, 200);
    wait_until(
        Duration::from_secs(10),
        "several logged attempts",
        || async { w.logs().matches("cannot connect to redis").count() >= 3 },
    )
    .await;
    assert!(w.logs().contains("\"attempt\":2"));
    assert!(w.is_running(), "no crash while redis is unreachable");
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handler_posts_payloads() {
    use axum::{Router, http::StatusCode, routing::post};
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let app = Router::new().route(
        "/task",
        post(|body: String| async move {
            if body.contains("ok") {
                (StatusCode::OK, "done".to_string())
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot do it".to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let q = Queue::new("jobs", "pool");
    enqueue(
        &url,
        &q,
        &[r#"{"s":"ok"}"#, r#"{"s":"ok"}"#, r#"{"s":"bad"}"#],
    )
    .await;
    let target = format!("http://{addr}/task");
    let _w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &[
            "--max-deliveries",
            "2",
            "--retry-backoff",
            "0.05",
            "--http",
            target.as_str(),
        ],
    );
    wait_until(Duration::from_secs(20), "2 done, 1 dead", || async {
        let st = stats(&url, &q).await;
        st.stream_length == 0 && st.dead_letters == 1
    })
    .await;
    let dl = dead_letters(&url, "jobs:dead").await;
    assert!(dl[0]["error"].contains("500"), "{:?}", dl[0]);
    assert!(dl[0]["error"].contains("cannot do it"), "{:?}", dl[0]);
}

#[test]
fn bad_flags_and_payloads_fail_with_a_clear_error() {
    let base = [
        "run",
        "--redis-url",
        "redis://127.0.0.1:1/",
        "--stream",
        "s",
        "--group",
        "g",
        "--consumer",
        "c",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (base.to_vec(), "--builtin"),
        (
            [&base[..], &["--builtin", "noop", "--http", "http://x"]].concat(),
            "cannot be used with",
        ),
        ([&base[..], &["--builtin", "bogus"]].concat(), "bogus"),
        (
            [
                &base[..],
                &["--builtin", "noop", "--visibility-timeout", "0"],
            ]
            .concat(),
            "--visibility-timeout",
        ),
        (
            [&base[..], &["--builtin", "noop", "--max-deliveries", "0"]].concat(),
            "--max-deliveries",
        ),
        (
            [&base[..], &["--builtin", "noop", "--concurrency", "x"]].concat(),
            "--concurrency",
        ),
        (
            [
                &base[..],
                &["--builtin", "noop", "--metrics-addr", "nowhere"],
            ]
            .concat(),
            "--metrics-addr",
        ),
        ([&base[..], &["--http", "ftp://x/"]].concat(), "--http"),
        (
            [&base[..], &["--exec", "workpool-no-such-handler"]].concat(),
            "\"workpool-no-such-handler\" is not found in PATH",
        ),
        (
            [&base[..], &["--exec", "/nonexistent/handler"]].concat(),
            "does not exist or is not executable",
        ),
        (
            vec![
                "run",
                "--redis-url",
                "not a url",
                "--stream",
                "s",
                "--group",
                "g",
                "--consumer",
                "c",
                "--builtin",
                "noop",
            ],
            "--redis-url",
        ),
        (
            vec![
                "submit",
                "--redis-url",
                "redis://127.0.0.1:1/",
                "--stream",
                "s",
                "--payload",
                "{nope",
            ],
            "--payload is not valid JSON",
        ),
        (
            vec![
                "stats",
                "--redis-url",
                "redis://127.0.0.1:1/",
                "--stream",
                "s",
            ],
            "--group",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(common::BIN)
            .args(&args)
            .env_remove("WORKPOOL_GROUP")
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(want),
            "{args:?}: stderr lacks {want:?}:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reads_json_lines_and_rejects_bad_input_whole() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let out = submit(&url, "jobs", &[], Some("{\"a\":1}\n\n{\"a\":2}\r\n[3]\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "enqueued 3");
    let out = submit(&url, "jobs", &[], Some("{\"a\":1}\nnot json\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin line 2"));
    let st = stats(&url, &q).await;
    assert_eq!(st.stream_length, 3, "bad input enqueues nothing");
    let mut c = conn(&url).await;
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("jobs")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("xrange");
    let payloads: Vec<&str> = v.iter().map(|(_, f)| f[0].1.as_str()).collect();
    assert_eq!(payloads, vec!["{\"a\":1}", "{\"a\":2}", "[3]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_timeout_is_stopped_with_its_children() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = side_file(&dir, "finished");
    let q = Queue::new("jobs", "pool");
    enqueue(&url, &q, &["{}"]).await;
    let script = format!("sleep 3; echo late >> {marker}");
    let _w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &[
            "--task-timeout",
            "0.3",
            "--max-deliveries",
            "1",
            "--exec",
            "sh",
            "-c",
            script.as_str(),
        ],
    );
    wait_until(Duration::from_secs(20), "dead letter", || async {
        stats(&url, &q).await.dead_letters == 1
    })
    .await;
    let dl = dead_letters(&url, "jobs:dead").await;
    assert!(
        dl[0]["error"].contains("timed out after 0.300s"),
        "{:?}",
        dl[0]
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        read_lines(&marker).is_empty(),
        "the handler's process group was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_tasks_waiting_to_retry_at_once() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    enqueue(&url, &q, &["{}"]).await;
    let mut w = Worker::spawn(
        &url,
        "jobs",
        "pool",
        "w1",
        &[
            "--retry-backoff",
            "30",
            "--shutdown-grace",
            "20",
            "--builtin",
            "fail",
        ],
    );
    wait_until(Duration::from_secs(20), "first failure", || async {
        w.metric("workpool_worker_tasks_total", "outcome=\"retried\"")
            .await
            == 1.0
    })
    .await;
    let t0 = std::time::Instant::now();
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "did not wait for the retry backoff"
    );
    let mut c = conn(&url).await;
    let p = q.pending_entries(&mut c, 10, None).await.expect("pending");
    assert_eq!(p.len(), 1, "the task is still pending, not lost");
    assert_eq!(p[0].deliveries, 1, "one run so far");
    assert!(
        p[0].idle_ms > 60_000,
        "handed back for immediate reclaim: idle {}",
        p[0].idle_ms
    );
    assert_eq!(stats(&url, &q).await.dead_letters, 0);
}

/// Kills a worker started directly with `Command` when the test ends, pass or fail, so
/// a failing assertion never leaves a worker process behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Configured only through `WORKPOOL_*` environment, as the operator configures pods:
/// the `--exec` handler sees the task (entry id, delivery, the producer's `id` and
/// `attempt`) but not the Redis URL, which may carry a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_configured_worker_hands_producer_fields_but_not_the_redis_url_to_handlers() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = side_file(&dir, "seen");
    let q = Queue::new("envjobs", "envpool");
    let mut c = conn(&url).await;
    let tasks = [queue::NewTask {
        payload: b"{}",
        id: Some("order-42"),
        attempt: Some(3),
    }];
    let ids = q.enqueue(&mut c, &tasks).await.expect("enqueue");
    let script = format!(
        "cat >/dev/null; echo \"$WORKPOOL_TASK_ID|$WORKPOOL_PRODUCER_ID|$WORKPOOL_ATTEMPT|${{WORKPOOL_REDIS_URL-unset}}\" >> {seen}"
    );
    let child = Command::new(common::BIN)
        .arg("run")
        .env("WORKPOOL_REDIS_URL", &url)
        .env("WORKPOOL_STREAM", "envjobs")
        .env("WORKPOOL_GROUP", "envpool")
        .env("WORKPOOL_CONSUMER", "env-1")
        .env("WORKPOOL_METRICS_ADDR", "127.0.0.1:0")
        .env("WORKPOOL_EXEC", &script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let mut child = Reap(child);
    wait_until(Duration::from_secs(20), "task handled", || async {
        !read_lines(&seen).is_empty()
    })
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        Signal::SIGTERM,
    );
    let status = child.0.wait().expect("worker exits");
    assert!(status.success(), "{status}");
    assert_eq!(read_lines(&seen), [format!("{}|order-42|3|unset", ids[0])]);
}

/// A worker whose stderr is a closed pipe (its log reader went away) keeps working and
/// still drains and exits 0 on SIGTERM instead of dying in the logger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stderr_does_not_stop_the_worker_or_its_drain() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("quiet", "pool");
    let child = Command::new(common::BIN)
        .args([
            "run",
            "--redis-url",
            &url,
            "--stream",
            "quiet",
            "--group",
            "pool",
        ])
        .args([
            "--consumer",
            "q1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--builtin",
            "noop",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut child = Reap(child);
    // Read the first log line, then close our end: every later log write hits EPIPE.
    {
        use std::io::BufRead;
        let mut first = String::new();
        let mut reader = std::io::BufReader::new(child.0.stderr.take().expect("stderr"));
        reader.read_line(&mut first).expect("first log line");
    }
    let payloads: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    enqueue(&url, &q, &refs).await;
    wait_until(Duration::from_secs(20), "tasks drained", || async {
        let st = stats(&url, &q).await;
        st.stream_length == 0 && st.pending == 0
    })
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        Signal::SIGTERM,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker ignored SIGTERM with a closed stderr"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// `stats` whose reader went away (`stats | head -1`) exits quietly instead of panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_into_a_closed_pipe_does_not_panic() {
    let redis = RedisServer::start().expect("redis-server");
    let mut child = Command::new(common::BIN)
        .args([
            "stats",
            "--redis-url",
            &redis.url(),
            "--stream",
            "s",
            "--group",
            "g",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stats");
    // Close the read end before stats has connected to Redis: its output hits EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("stats exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{} {stderr}", out.status);
}
