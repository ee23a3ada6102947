//! Partitioned pools on one Redis: `submit` spreads tasks round robin (or by key), every
//! worker reads every partition without starving any, each partition has its own
//! dead-letter stream, and `stats` reports the sums and each partition.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Recorder, Worker, conn, wait_until};
use workpool_worker::queue::{NewTask, Pool};
use workpool_worker::testing::RedisServer;

fn cli(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    child.wait_with_output().expect("output")
}

fn stats_json(url: &str, partitions: &str) -> serde_json::Value {
    let out = cli(
        &[
            "stats",
            "--redis-url",
            url,
            "--stream",
            "p",
            "--group",
            "g",
            "--partitions",
            partitions,
            "--json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_spreads_by_round_robin_and_by_key_and_stats_sum_the_partitions() {
    let redis = RedisServer::start().expect("redis");
    let url = redis.url();
    let out = cli(
        &[
            "submit",
            "--redis-url",
            &url,
            "--stream",
            "p",
            "--partitions",
            "4",
            "--payload",
            "{}",
            "--count",
            "401",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = stats_json(&url, "4");
    assert_eq!(st["stream_length"], 401);
    let lens: Vec<u64> = (0..4)
        .map(|p| st["partitions"][p]["stream_length"].as_u64().expect("len"))
        .collect();
    assert_eq!(lens.iter().sum::<u64>(), 401);
    assert!(
        lens.iter().all(|l| *l == 100 || *l == 101),
        "round robin: {lens:?}"
    );
    assert_eq!(
        st["partitions"][0]["stream"], "p",
        "partition 0 keeps the stream's name"
    );
    assert_eq!(st["partitions"][3]["stream"], "p:3");

    // --key-field: the same key, the same partition, whatever the line's position.
    let pool = Pool::new("p", "g").with_partitions(4);
    let lines: String = (0..40)
        .map(|i| format!("{{\"customer\":\"c{}\",\"n\":{i}}}\n", i % 5))
        .collect();
    let out = cli(
        &[
            "submit",
            "--redis-url",
            &url,
            "--stream",
            "p",
            "--partitions",
            "4",
            "--stdin",
            "--key-field",
            "customer",
        ],
        &lines,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = lens.clone();
    for i in 0..5 {
        want[pool.partition_for_key(format!("c{i}").as_bytes())] += 8;
    }
    let st = stats_json(&url, "4");
    let got: Vec<u64> = (0..4)
        .map(|p| st["partitions"][p]["stream_length"].as_u64().expect("len"))
        .collect();
    assert_eq!(got, want);
    // A line without the key field: nothing is enqueued, the error names the line.
    let out = cli(
        &[
            "submit",
            "--redis-url",
            &url,
            "--stream",
            "p",
            "--partitions",
            "4",
            "--stdin",
            "--key-field",
            "customer",
        ],
        "{\"customer\":\"a\"}\n{\"n\":1}\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("stdin line 2") && err.contains("no key field"),
        "{err}"
    );
    assert_eq!(stats_json(&url, "4")["stream_length"], 441);
    // The text form lists the partitions.
    let out = cli(
        &[
            "stats",
            "--redis-url",
            &url,
            "--stream",
            "p",
            "--group",
            "g",
            "--partitions",
            "4",
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("partitions:    4") && text.contains("p:3"),
        "{text}"
    );
}

/// One slot, four partitions, all tasks in the last one: the worker reads it (a blocked
/// read of an empty partition holds no slot); then tasks in every partition all finish,
/// each failure in its own partition's dead-letter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_every_partition_without_starving_any() {
    let redis = RedisServer::start().expect("redis");
    let url = redis.url();
    let pool = Pool::new("p", "g").with_partitions(4);
    let handler = Recorder::start().await;
    let mut c = conn(&url).await;
    let ids: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let payload = |i: usize| {
        if i.is_multiple_of(25) {
            "perm 0"
        } else {
            "ok 0.01"
        }
    };
    // First only partition 3.
    let q3 = pool.partition(3);
    let tasks: Vec<NewTask<'_>> = (0..50)
        .map(|i| NewTask {
            payload: payload(i).as_bytes(),
            id: Some(&ids[i]),
            attempt: None,
        })
        .collect();
    q3.enqueue(&mut c, &tasks).await.expect("enqueue");
    let mut w = Worker::spawn(
        &url,
        "p",
        "g",
        "w1",
        &[
            "--partitions",
            "4",
            "--concurrency",
            "1",
            "--http",
            &handler.url,
        ],
    );
    wait_until(
        Duration::from_secs(60),
        "partition 3 drained by one slot",
        || async { handler.counts().2.len() >= 50 },
    )
    .await;
    // Then every partition.
    for (i, id) in ids.iter().enumerate().skip(50) {
        let q = pool.partition(i % 4);
        q.enqueue(
            &mut c,
            &[NewTask {
                payload: payload(i).as_bytes(),
                id: Some(id),
                attempt: None,
            }],
        )
        .await
        .expect("enqueue");
    }
    wait_until(
        Duration::from_secs(90),
        "all partitions drained",
        || async {
            let st = pool.stats(&c).await.expect("stats");
            st.stream_length == 0 && st.pending == 0
        },
    )
    .await;
    let (started, ended, _) = handler.counts();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(started.get(id), Some(&1), "{id} ran once");
        assert_eq!(ended.contains_key(id), payload(i) == "ok 0.01", "{id}");
    }
    // Dead letters: each in its own partition's stream.
    let mut per_partition: HashMap<usize, usize> = HashMap::new();
    for (p, q) in pool.queues().iter().enumerate() {
        let n: usize = redis::cmd("XLEN")
            .arg(q.dead_letter_stream())
            .query_async(&mut c)
            .await
            .expect("xlen");
        per_partition.insert(p, n);
    }
    assert_eq!(pool.partition(2).dead_letter_stream(), "p:2:dead");
    // Tasks 0..50 in partition 3 (0 and 25 perm), then i % 4 (50, 75, ... perm).
    let mut want: HashMap<usize, usize> = HashMap::new();
    for i in (0..200).filter(|i: &usize| i.is_multiple_of(25)) {
        *want.entry(if i < 50 { 3 } else { i % 4 }).or_default() += 1;
    }
    for p in 0..4 {
        assert_eq!(
            per_partition[&p],
            want.get(&p).copied().unwrap_or(0),
            "partition {p}"
        );
    }
    let st = stats_json(&url, "4");
    assert_eq!(st["dead_letters"], 8);
    assert_eq!(st["consumers"][0]["name"], "w1");
    assert_eq!(
        st["consumers"].as_array().map(Vec::len),
        Some(1),
        "merged over partitions"
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(20)).await.success());
}
