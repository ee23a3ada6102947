//! Task results (docs/protocol.md 8) written by the real worker and read back by the Rust
//! client: `wait_for` waiters blocked before the tasks ran get the record the worker
//! wrote, for `--exec` and `--http` handlers, done and dead-lettered tasks, several tasks
//! per worker and several workers, a partitioned pool and a Redis Cluster; a task never
//! leaves its stream without its record (checked atomically while the pool drains);
//! output is cut at the limit while the pod log gets all of it; with results off nothing
//! is written.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::{Worker, wait_until};
use workpool_client::target::Tls;
use workpool_client::{Layout, Pool, Task, TaskResult, TaskStatus};
use workpool_worker::testing::{ClusterOptions, RedisCluster, RedisServer};

const STREAM: &str = "jobs";
const GROUP: &str = "pool";
/// The output limit the workers run with (`--results-max-output`).
const LIMIT: usize = 1000;
/// How much a `big` task writes: more than the limit.
const BIG: usize = 100_000;
const TTL_MS: i64 = 60_000;

/// The exec handler: `ok` prints `out:<payload>`, `big` prints BIG x's, `fail` fails
/// (retried, then dead-lettered), `perm` fails for good (exit 100).
const EXEC_HANDLER: &str = r#"p=$(cat)
case "$p" in
  *perm*) echo "bad input $p" >&2; exit 100;;
  *fail*) echo "boom $p" >&2; exit 1;;
  *big*) head -c 100000 /dev/zero | tr '\0' x;;
  *) printf 'out:%s' "$p";;
esac"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Big,
    Fail,
    Perm,
}

fn kind(i: usize) -> Kind {
    match i % 10 {
        3 => Kind::Fail,
        7 => Kind::Perm,
        5 => Kind::Big,
        _ => Kind::Ok,
    }
}

fn payload(i: usize) -> String {
    let k = match kind(i) {
        Kind::Ok => "ok",
        Kind::Big => "big",
        Kind::Fail => "fail",
        Kind::Perm => "perm",
    };
    format!(r#"{{"i":{i},"kind":"{k}"}}"#)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The flags of a worker with results on (`handler` last).
fn worker_args<'a>(partitions: &'a str, handler: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--partitions",
        partitions,
        "--results-ttl",
        "60",
        "--results-max-output",
        "1000",
        "--max-deliveries",
        "2",
        "--retry-backoff",
        "0.05",
        "--concurrency",
        "4",
    ];
    a.extend_from_slice(handler);
    a
}

/// A task never leaves its stream without its record: for each task of one partition,
/// atomically, "the entry is gone and the record does not exist" never holds. KEYS:
/// stream, the tasks' record keys. ARGV: their entry ids. Returns the entry ids that
/// break it.
const NO_GAP_CHECK: &str = r#"
local bad = {}
for i = 2, #KEYS do
  if #redis.call('XRANGE', KEYS[1], ARGV[i - 1], ARGV[i - 1]) == 0
    and redis.call('EXISTS', KEYS[i]) == 0 then
    bad[#bad + 1] = ARGV[i - 1]
  end
end
return bad
"#;

struct Submitted {
    i: usize,
    sub: workpool_client::Submitted,
}

/// Submits `n` tasks (even ones with a producer id, odd ones keyed by their entry id),
/// blocks a `wait_for` on each before any worker runs, starts the workers with
/// `spawn`, and checks every record against what the handler did (`prefix`: what an
/// `ok` task's output starts with). Returns the workers (for their stdout).
async fn drain_and_check<F>(pool: &Pool, n: usize, prefix: &str, spawn: F) -> Vec<Worker>
where
    F: FnOnce() -> Vec<Worker>,
{
    let mut subs = Vec::new();
    for i in 0..n {
        let mut t = Task::new(payload(i));
        if i % 2 == 0 {
            t = t.with_id(format!("order-{i}"));
        }
        let sub = pool.submit(t).await.expect("submit");
        if i % 2 == 1 {
            assert_eq!(sub.task_id, sub.entry_id.to_string());
        }
        subs.push(Submitted { i, sub });
    }
    let submitted_ms = now_ms();
    for s in &subs {
        assert_eq!(
            pool.status(s.sub.partition, &s.sub.task_id, Some(s.sub.entry_id))
                .await
                .unwrap(),
            TaskStatus::Queued
        );
    }
    // Waiters blocked before anything runs: they wake on the worker's push.
    let waiters: Vec<_> = subs
        .iter()
        .map(|s| {
            let pool = pool.clone();
            let (p, id) = (s.sub.partition, s.sub.task_id.clone());
            tokio::spawn(async move { pool.wait_for(p, &id, Duration::from_secs(90)).await })
        })
        .collect();
    // While the pool drains: no task is out of its stream without its record.
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (pool, stop) = (pool.clone(), stop.clone());
        let mut by_partition: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for s in &subs {
            let stream = pool.layout().partition_stream(s.sub.partition);
            by_partition.entry(s.sub.partition).or_default().push((
                workpool_client::results::result_key(&stream, &s.sub.task_id),
                s.sub.entry_id.to_string(),
            ));
        }
        tokio::spawn(async move {
            let mut checks = 0u64;
            let mut c = pool.connection();
            while !stop.load(Ordering::SeqCst) {
                for (p, tasks) in &by_partition {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(NO_GAP_CHECK)
                        .arg(tasks.len() + 1)
                        .arg(pool.layout().partition_stream(*p));
                    for (key, _) in tasks {
                        cmd.arg(key);
                    }
                    for (_, id) in tasks {
                        cmd.arg(id);
                    }
                    let bad: Vec<String> = cmd.query_async(&mut c).await.expect("check");
                    assert!(
                        bad.is_empty(),
                        "tasks out of their stream without a record: {bad:?}"
                    );
                    checks += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            checks
        })
    };
    let workers = spawn();
    let mut results = Vec::new();
    for w in waiters {
        results.push(
            w.await
                .expect("waiter")
                .expect("a result within the timeout"),
        );
    }
    stop.store(true, Ordering::SeqCst);
    let checks = checker.await.expect("the no-gap invariant held");
    assert!(checks > 0);
    let finished_ms = now_ms();

    let mut c = pool.connection();
    // The dead letters by the entry id of their task.
    let mut dead_letters: HashMap<String, String> = HashMap::new();
    for p in 0..pool.layout().partitions() {
        let v: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(pool.layout().dead_letter_stream(p))
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        for (id, fields) in v {
            dead_letters.insert(fields["original_id"].clone(), id);
        }
    }
    let consumers: Vec<String> = workers.iter().map(|w| w.consumer.clone()).collect();
    let mut by_consumer: HashMap<String, usize> = HashMap::new();
    for (s, r) in subs.iter().zip(&results) {
        let entry_id = s.sub.entry_id.to_string();
        let what = format!("task {} ({:?}): {r:?}", s.i, kind(s.i));
        check_common(r, s, &consumers, submitted_ms, finished_ms, &what);
        *by_consumer
            .entry(r.consumer.clone().unwrap_or_default())
            .or_default() += 1;
        match kind(s.i) {
            Kind::Ok => {
                assert_eq!(r.state, "done", "{what}");
                assert_eq!(r.deliveries, Some(1), "{what}");
                let want = format!("{prefix}{}", payload(s.i));
                assert_eq!(r.output.as_deref(), Some(want.as_bytes()), "{what}");
                assert!(!r.output_truncated, "{what}");
                assert_eq!(
                    (r.error.as_deref(), r.dead_letter_id.as_deref()),
                    (None, None)
                );
            }
            Kind::Big => {
                assert_eq!(r.state, "done", "{what}");
                let out = r.output.as_deref().expect("output");
                assert_eq!(out.len(), LIMIT, "{what}");
                assert!(out.iter().all(|&b| b == out[0]), "{what}");
                assert!(r.output_truncated, "{what}");
            }
            Kind::Fail => {
                assert_eq!(r.state, "dead", "{what}");
                assert_eq!(r.deliveries, Some(2), "{what}");
                let e = r.error.as_deref().expect("error");
                assert!(e.starts_with("failed 2 times (maxDeliveries 2)"), "{what}");
                assert!(e.contains("boom"), "{what}");
                assert_eq!(
                    r.dead_letter_id.as_ref(),
                    dead_letters.get(&entry_id),
                    "{what}"
                );
                assert_eq!((r.output.as_deref(), r.output_truncated), (None, false));
            }
            Kind::Perm => {
                assert_eq!(r.state, "dead", "{what}");
                assert_eq!(r.deliveries, Some(1), "{what}");
                let e = r.error.as_deref().expect("error");
                assert!(e.starts_with("permanent failure:"), "{what}");
                assert!(e.contains("bad input"), "{what}");
                assert_eq!(
                    r.dead_letter_id.as_ref(),
                    dead_letters.get(&entry_id),
                    "{what}"
                );
            }
        }
        // The keys: the record with the TTL, the notification list holding the state.
        let stream = pool.layout().partition_stream(s.sub.partition);
        let rkey = workpool_client::results::result_key(&stream, &s.sub.task_id);
        let nkey = workpool_client::results::notify_key(&stream, &s.sub.task_id);
        for key in [&rkey, &nkey] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(ttl > 0 && ttl <= TTL_MS, "{key}: PTTL {ttl}");
        }
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(&nkey)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(list, vec![r.state.clone()], "{what}");
        // Status and a late waiter read the same record at once.
        assert_eq!(
            pool.status(s.sub.partition, &s.sub.task_id, Some(s.sub.entry_id))
                .await
                .unwrap(),
            TaskStatus::Finished(Box::new(r.clone()))
        );
        let again = pool
            .wait_for(s.sub.partition, &s.sub.task_id, Duration::from_millis(1))
            .await
            .expect("a finished task's result at once");
        assert_eq!(&again, r);
    }
    let dead = (0..n)
        .filter(|i| matches!(kind(*i), Kind::Fail | Kind::Perm))
        .count();
    assert_eq!(dead_letters.len(), dead, "one dead letter per dead task");
    eprintln!("tasks per consumer: {by_consumer:?}");
    workers
}

fn check_common(
    r: &TaskResult,
    s: &Submitted,
    consumers: &[String],
    submitted_ms: u64,
    finished_ms: u64,
    what: &str,
) {
    assert_eq!(r.version, Some(1), "{what}");
    assert_eq!(r.task_id.as_deref(), Some(s.sub.task_id.as_str()), "{what}");
    assert_eq!(r.entry_id, Some(s.sub.entry_id.to_string()), "{what}");
    assert!(
        consumers.contains(r.consumer.as_ref().expect("consumer")),
        "{what}"
    );
    let (start, end) = (
        r.started_ms.expect("started"),
        r.finished_ms.expect("finished"),
    );
    // A second of slack: the worker's clock is this machine's, read at other instants.
    assert!(
        submitted_ms <= start + 1000 && start <= end && end <= finished_ms + 1000,
        "{what}"
    );
    assert!(r.extra.is_empty(), "{what}");
}

fn exec_workers(url: &str, partitions: &str, names: &[&str]) -> Vec<Worker> {
    names
        .iter()
        .map(|name| {
            Worker::spawn_capturing_stdout(
                url,
                STREAM,
                GROUP,
                name,
                &worker_args(partitions, &["--exec-shell", EXEC_HANDLER]),
            )
        })
        .collect()
}

/// The workers' stdout (the pod log) got every byte the handlers printed, the cut
/// outputs included.
async fn assert_stdout_teed(workers: &[Worker], n: usize) {
    let bigs = (0..n).filter(|i| kind(*i) == Kind::Big).count();
    let xs = || {
        workers
            .iter()
            .flat_map(|w| w.stdout())
            .filter(|&b| b == b'x')
            .count()
    };
    // Written before the ack; our reader of the pipe may lag behind.
    wait_until(
        Duration::from_secs(10),
        "the big outputs on stdout",
        || async { xs() >= bigs * BIG },
    )
    .await;
    let out: Vec<u8> = workers.iter().flat_map(|w| w.stdout()).collect();
    let text = String::from_utf8_lossy(&out);
    for i in (0..n).filter(|i| kind(*i) == Kind::Ok) {
        let line = format!("out:{}", payload(i));
        assert!(text.contains(&line), "{line} not in the workers' stdout");
    }
    let xs = out.iter().filter(|&&b| b == b'x').count();
    assert_eq!(
        xs,
        bigs * BIG,
        "every byte of the big outputs reached stdout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_results_reach_waiters_from_several_workers() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let pool = Pool::connect_url(&url, &Tls::none(), Layout::new(STREAM, GROUP))
        .await
        .expect("pool");
    let n = 40;
    let workers = drain_and_check(&pool, n, "out:", || {
        exec_workers(&url, "1", &["w1", "w2", "w3"])
    })
    .await;
    assert_stdout_teed(&workers, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_results_in_a_partitioned_pool() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let layout = Layout::new(STREAM, GROUP).with_partitions(3);
    let pool = Pool::connect_url(&url, &Tls::none(), layout)
        .await
        .expect("pool");
    let n = 30;
    let workers =
        drain_and_check(&pool, n, "out:", || exec_workers(&url, "3", &["w1", "w2"])).await;
    assert_stdout_teed(&workers, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_results_on_a_cluster() {
    let cluster = RedisCluster::start(ClusterOptions::default()).expect("redis cluster");
    let url = cluster.url();
    let layout = Layout::new(STREAM, GROUP).with_partitions(3);
    let pool = Pool::connect_url(&url, &Tls::none(), layout)
        .await
        .expect("pool");
    assert!(pool.layout().is_cluster());
    let n = 30;
    let workers =
        drain_and_check(&pool, n, "out:", || exec_workers(&url, "3", &["w1", "w2"])).await;
    assert_stdout_teed(&workers, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_results_carry_the_response_body() {
    use axum::{Router, http::StatusCode, routing::post};
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let app = Router::new().route(
        "/task",
        post(|body: String| async move {
            if body.contains("perm") {
                (StatusCode::BAD_REQUEST, format!("bad input {body}"))
            } else if body.contains("fail") {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("boom {body}"))
            } else if body.contains("big") {
                (StatusCode::OK, "y".repeat(BIG))
            } else {
                (StatusCode::OK, format!("resp:{body}"))
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
    let target = format!("http://{addr}/task");
    let pool = Pool::connect_url(&url, &Tls::none(), Layout::new(STREAM, GROUP))
        .await
        .expect("pool");
    drain_and_check(&pool, 40, "resp:", || {
        ["w1", "w2"]
            .iter()
            .map(|name| {
                Worker::spawn(
                    &url,
                    STREAM,
                    GROUP,
                    name,
                    &worker_args("1", &["--http", &target]),
                )
            })
            .collect()
    })
    .await;
}

/// With results off (the default) the worker writes no record, no notification and runs
/// no command of the results (`HSET`, `RPUSH`, `PEXPIRE`, also none inside its scripts):
/// a waiter times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_off_writes_nothing() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let pool = Pool::connect_url(&url, &Tls::none(), Layout::new(STREAM, GROUP))
        .await
        .expect("pool");
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(
            pool.submit(Task::new(payload(i)).with_id(format!("order-{i}")))
                .await
                .unwrap(),
        );
    }
    let workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|name| {
            Worker::spawn_capturing_stdout(
                &url,
                STREAM,
                GROUP,
                name,
                &[
                    "--max-deliveries",
                    "2",
                    "--retry-backoff",
                    "0.05",
                    "--exec-shell",
                    EXEC_HANDLER,
                ],
            )
        })
        .collect();
    wait_until(
        Duration::from_secs(30),
        "every task done or dead",
        || async {
            let st = pool.stats().await.unwrap();
            st.stream_length == 0 && st.dead_letters == 4
        },
    )
    .await;
    let mut c = pool.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, vec!["jobs".to_string(), "jobs:dead".to_string()]);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    for cmd in ["cmdstat_hset:", "cmdstat_rpush:", "cmdstat_pexpire:"] {
        assert!(!info.contains(cmd), "{cmd} ran with results off:\n{info}");
    }
    for s in &subs {
        assert_eq!(
            pool.status(s.partition, &s.task_id, Some(s.entry_id))
                .await
                .unwrap(),
            TaskStatus::Unknown
        );
    }
    let e = pool
        .wait_for(0, &subs[0].task_id, Duration::from_millis(300))
        .await
        .expect_err("no result with results off");
    assert!(matches!(e, workpool_client::WaitError::Timeout(_)), "{e:?}");
    // The handlers' output still reaches the pod log.
    assert_stdout_teed(&workers, subs.len()).await;
}

#[test]
fn results_flags_are_checked() {
    let out = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--stream",
            "s",
            "--group",
            "g",
            "--consumer",
            "c",
            "--results-max-output",
            "10",
            "--builtin",
            "noop",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--results-ttl"), "{err}");
    for bad in ["0", "-1", "soon", ""] {
        let out = std::process::Command::new(common::BIN)
            .args([
                "run",
                "--redis-url",
                "redis://127.0.0.1:1/",
                "--stream",
                "s",
                "--group",
                "g",
                "--consumer",
                "c",
                &format!("--results-ttl={bad}"),
                "--builtin",
                "noop",
            ])
            .output()
            .expect("run");
        assert!(!out.status.success(), "--results-ttl {bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--results-ttl"), "{err}");
    }
    let out = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--stream",
            "s",
            "--group",
            "g",
            "--consumer",
            "c",
            "--results-ttl",
            "10",
            "--results-max-output",
            "16777217",
            "--builtin",
            "noop",
        ])
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "an output limit over 16 MiB accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--results-max-output"), "{err}");
}

/// The inline `noop` handler records `done` without output; a task the worker
/// dead-letters without running it (delivered more than maxDeliveries times by workers
/// that died) records `dead` without `started_ms`; an `id` field a client would refuse
/// (the form of an entry id, or longer than 512 bytes) does not name the record: the
/// entry id does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_a_run_and_task_ids_a_client_would_refuse() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let pool = Pool::connect_url(&url, &Tls::none(), Layout::new(STREAM, GROUP))
        .await
        .expect("pool");
    let mut c = pool.connection();
    let xadd = |id: Option<String>| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(STREAM).arg("*").arg("payload").arg("{}");
        if let Some(id) = id {
            cmd.arg("id").arg(id);
        }
        cmd
    };
    // A task that "died" with 5 workers: held by a ghost consumer, idle, 5 deliveries.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let poison: String = xadd(Some("poison-1".into()))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg("ghost")
        .arg(0)
        .arg(&poison)
        .arg("IDLE")
        .arg(100_000)
        .arg("RETRYCOUNT")
        .arg(5)
        .query_async(&mut c)
        .await
        .unwrap();
    let entry_form: String = xadd(Some("12-34".into()))
        .query_async(&mut c)
        .await
        .unwrap();
    let too_long: String = xadd(Some("x".repeat(513)))
        .query_async(&mut c)
        .await
        .unwrap();
    let good: String = xadd(Some("fine-1".into()))
        .query_async(&mut c)
        .await
        .unwrap();
    let plain: String = xadd(None).query_async(&mut c).await.unwrap();
    let _workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|name| {
            Worker::spawn(
                &url,
                STREAM,
                GROUP,
                name,
                &worker_args("1", &["--visibility-timeout", "1", "--builtin", "noop"]),
            )
        })
        .collect();
    let wait = |id: String| {
        let pool = pool.clone();
        async move {
            pool.wait_for(0, &id, Duration::from_secs(30))
                .await
                .expect("a result")
        }
    };
    let dead = wait("poison-1".into()).await;
    assert_eq!(dead.state, "dead", "{dead:?}");
    assert_eq!(dead.entry_id.as_deref(), Some(poison.as_str()));
    assert_eq!(dead.deliveries, Some(6), "{dead:?}");
    assert_eq!(dead.started_ms, None, "it did not run: {dead:?}");
    assert!(dead.finished_ms.is_some());
    let e = dead.error.as_deref().expect("error");
    assert!(e.starts_with("delivered 6 times without completing"), "{e}");
    assert!(dead.dead_letter_id.is_some());
    for (entry, task_id) in [
        (&entry_form, entry_form.clone()),
        (&too_long, too_long.clone()),
        (&good, "fine-1".to_string()),
        (&plain, plain.clone()),
    ] {
        let r = wait(task_id.clone()).await;
        assert_eq!(r.state, "done", "{r:?}");
        assert_eq!(r.task_id.as_deref(), Some(task_id.as_str()));
        assert_eq!(r.entry_id.as_deref(), Some(entry.as_str()));
        assert_eq!((r.output, r.output_truncated), (None, false));
        assert!(r.started_ms.is_some() && r.deliveries == Some(1));
    }
    // Nothing was keyed by the refused ids.
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("jobs:result:*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    let mut want: Vec<String> = [&poison, &entry_form, &too_long, &plain]
        .iter()
        .map(|e| format!("jobs:result:{e}"))
        .collect();
    want.retain(|k| *k != format!("jobs:result:{poison}"));
    want.push("jobs:result:poison-1".into());
    want.push("jobs:result:fine-1".into());
    want.sort();
    assert_eq!(keys, want);
}

/// A task retried from the dead-letter stream keeps its task id, with or without a
/// producer id, also when it is dead-lettered and retried a second time: waiters of the
/// task id (the entry id of its first submit when it had no producer id) get each new
/// run's record (docs/protocol.md 6 and 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_tasks_keep_their_task_ids() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let layout = Layout::new(STREAM, GROUP).with_partitions(2);
    let pool = Pool::connect_url(&url, &Tls::none(), layout)
        .await
        .expect("pool");
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    // Fails for good until the file exists, then prints its payload.
    let handler = format!(
        r#"p=$(cat); if [ -e '{}' ]; then printf 'out:%s' "$p"; else echo "not yet $p" >&2; exit 100; fi"#,
        ready.display()
    );
    let _workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|name| {
            Worker::spawn(
                &url,
                STREAM,
                GROUP,
                name,
                &worker_args("2", &["--exec-shell", &handler]),
            )
        })
        .collect();
    let mut subs = Vec::new();
    for i in 0..8 {
        let mut t = Task::new(format!(r#"{{"i":{i}}}"#));
        if i % 2 == 0 {
            t = t.with_id(format!("order-{i}"));
        }
        subs.push((i, pool.submit(t).await.expect("submit")));
    }
    let wait_all = |round: &'static str| {
        let pool = pool.clone();
        let subs = subs.clone();
        async move {
            let mut out = Vec::new();
            for (i, s) in &subs {
                let r = pool
                    .wait_for(s.partition, &s.task_id, Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("{round}: task {i} ({}): {e}", s.task_id));
                assert_eq!(r.task_id.as_deref(), Some(s.task_id.as_str()), "{round}");
                out.push(r);
            }
            out
        }
    };
    let first = wait_all("first run").await;
    for r in &first {
        assert_eq!(r.state, "dead", "{r:?}");
    }
    // Retried while the handler still fails: dead again, a new record under the same id.
    let retried = pool
        .retry_all_dead_letters(&Default::default())
        .await
        .expect("retry");
    assert_eq!(retried.iter().filter(|o| o.entry_id.is_some()).count(), 8);
    let second = wait_all("second run").await;
    for (r, (i, s)) in second.iter().zip(&subs) {
        assert_eq!(r.state, "dead", "{r:?}");
        assert_ne!(
            r.entry_id,
            Some(s.entry_id.to_string()),
            "task {i} ran again"
        );
        assert_ne!(r.dead_letter_id, first[*i].dead_letter_id);
    }
    std::fs::write(&ready, b"").expect("ready");
    pool.retry_all_dead_letters(&Default::default())
        .await
        .expect("retry");
    let third = wait_all("third run").await;
    for ((r, (i, s)), before) in third.iter().zip(&subs).zip(&second) {
        assert_eq!(r.state, "done", "{r:?}");
        assert_eq!(
            r.output.as_deref(),
            Some(format!(r#"out:{{"i":{i}}}"#).as_bytes())
        );
        assert_ne!(r.entry_id, Some(s.entry_id.to_string()));
        assert_ne!(r.entry_id, before.entry_id);
    }
    // Every record is keyed by its task id: none under a retried entry's id.
    let mut c = pool.connection();
    let mut keys: Vec<String> = Vec::new();
    for p in 0..2 {
        let stream = pool.layout().partition_stream(p);
        let mut k: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{stream}:result:*"))
            .query_async(&mut c)
            .await
            .unwrap();
        keys.append(&mut k);
    }
    keys.sort();
    let mut want: Vec<String> = subs
        .iter()
        .map(|(_, s)| {
            workpool_client::results::result_key(
                &pool.layout().partition_stream(s.partition),
                &s.task_id,
            )
        })
        .collect();
    want.sort();
    assert_eq!(keys, want);
}
