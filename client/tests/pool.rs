//! The producer API against real redis-servers: batches, deduplication, durable submit,
//! dead-letter retry and purge, checked by their invariants under concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use workpool_client::submit::Durable;
use workpool_client::target::{Connection, Tls};
use workpool_client::{DeadLetterFilter, DeadLetterRef, EntryId, Error, Layout, Pool, Task};
use workpool_worker::testing::RedisServer;

async fn pool(server: &RedisServer, layout: Layout) -> Pool {
    Pool::connect_url(&server.url(), &Tls::none(), layout)
        .await
        .expect("connect")
}

async fn xlen(c: &Connection, key: &str) -> u64 {
    let mut c = c.clone();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn ids_in(c: &Connection, key: &str) -> Vec<(EntryId, BTreeMap<String, String>)> {
    let mut c = c.clone();
    let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, f)| (id.parse().unwrap(), f.into_iter().collect()))
        .collect()
}

/// Writes `n` dead letters into partition `p` as the worker does, task ids `t-<start+i>`.
async fn dead_letters(pool: &Pool, p: usize, start: usize, n: usize, error: &str) {
    let mut c = pool.connection();
    let mut pipe = redis::pipe();
    for i in start..start + n {
        pipe.cmd("XADD")
            .arg(pool.layout().dead_letter_stream(p))
            .arg("*")
            .arg("payload")
            .arg(format!("{{\"n\":{i}}}"))
            .arg("original_id")
            .arg(format!("{}-0", 1000 + i))
            .arg("error")
            .arg(error)
            .arg("deliveries")
            .arg(5)
            .arg("stream")
            .arg(pool.layout().partition_stream(p))
            .arg("group")
            .arg(pool.layout().group())
            .arg("consumer")
            .arg(if i % 2 == 0 { "w1" } else { "w2" })
            .arg("id")
            .arg(format!("t-{i}"))
            .ignore();
    }
    pipe.query_async::<()>(&mut c).await.unwrap();
}

#[tokio::test]
async fn a_pipelined_batch_spreads_round_robin_and_keeps_input_order() {
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("jobs", "jobs").with_partitions(3))
        .await
        .with_round_robin_start(0)
        .unwrap()
        .with_pipeline(100);
    let tasks: Vec<Task> = (0..2500)
        .map(|i| Task::json(&serde_json::json!({ "n": i })).unwrap())
        .collect();
    let subs = pool.submit_many(tasks, None).await.expect("submit");
    assert_eq!(subs.len(), 2500);
    let c = pool.connection();
    for p in 0..3 {
        let entries = ids_in(&c, &pool.layout().partition_stream(p)).await;
        // Task i went to partition i % 3, in input order within it.
        let ns: Vec<u64> = entries
            .iter()
            .map(|(_, f)| {
                serde_json::from_str::<serde_json::Value>(&f["payload"]).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let want: Vec<u64> = (0..2500).filter(|i| i % 3 == p as u64).collect();
        assert_eq!(ns, want, "partition {p}");
    }
    for (i, s) in subs.iter().enumerate() {
        assert_eq!(s.partition, i % 3);
        assert_eq!(
            s.task_id,
            s.entry_id.to_string(),
            "no producer id: the entry id"
        );
        assert_eq!(s.confirmed, None);
    }
    let st = pool.stats().await.unwrap();
    assert_eq!(
        (st.backlog, st.stream_length, st.partitions.len()),
        (2500, 2500, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deduplicated_submits_of_one_id_add_one_entry() {
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("orders", "orders").with_partitions(4)).await;
    for round in 0..5 {
        let id = format!("order-{round}");
        let subs = futures::future::join_all((0..16).map(|i| {
            let pool = pool.clone();
            let id = id.clone();
            async move {
                pool.submit(
                    Task::new(format!("copy {i}"))
                        .with_id(id)
                        .with_dedup(Duration::from_secs(60)),
                )
                .await
                .expect("submit")
            }
        }))
        .await;
        assert_eq!(
            subs.iter().filter(|s| !s.duplicate).count(),
            1,
            "{id}: one original"
        );
        let entry: BTreeSet<EntryId> = subs.iter().map(|s| s.entry_id).collect();
        assert_eq!(entry.len(), 1, "{id}: every submit names the one entry");
        let p = pool.layout().partition_for_key(id.as_bytes());
        assert!(subs.iter().all(|s| s.partition == p && s.task_id == id));
    }
    let st = pool.stats().await.unwrap();
    assert_eq!(st.stream_length, 5, "five ids, five entries");
}

#[tokio::test]
async fn durable_submit_is_confirmed_only_by_a_real_replica() {
    let primary = RedisServer::start().expect("primary");
    let replica = RedisServer::start().expect("replica");
    let pool = pool(&primary, Layout::new("d", "d")).await;
    let durable = Some(Durable {
        min_replicas: 1,
        timeout: Duration::from_millis(200),
    });
    let subs = pool
        .submit_many(vec![Task::new("a"), Task::new("b")], durable)
        .await
        .unwrap();
    assert!(
        subs.iter().all(|s| s.confirmed == Some(false)),
        "no replica yet: {subs:?}"
    );
    assert_eq!(
        xlen(&pool.connection(), "d").await,
        2,
        "unconfirmed tasks are still in the queue"
    );
    let _: () = replica
        .cmd(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port()))
        .expect("REPLICAOF");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = replica.cmd(redis::cmd("INFO").arg("replication")).unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let durable = Some(Durable {
        min_replicas: 1,
        timeout: Duration::from_secs(5),
    });
    let subs = pool
        .submit_many(
            (0..50).map(|i| Task::new(format!("{i}"))).collect(),
            durable,
        )
        .await
        .unwrap();
    assert!(subs.iter().all(|s| s.confirmed == Some(true)), "{subs:?}");
    let on_replica: u64 = replica.cmd(redis::cmd("XLEN").arg("d")).unwrap();
    assert_eq!(on_replica, 52);
    let err = pool
        .submit_many(
            vec![Task::new("x")],
            Some(Durable {
                min_replicas: 0,
                timeout: Duration::from_secs(1),
            }),
        )
        .await
        .expect_err("min_replicas 0");
    assert!(matches!(err.source, Error::InvalidArgument(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_put_each_dead_letter_back_once() {
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("r", "r").with_partitions(2)).await;
    dead_letters(&pool, 0, 0, 120, "boom").await;
    dead_letters(&pool, 1, 120, 80, "boom").await;
    let all = pool
        .dead_letters(&DeadLetterFilter::default(), None, false)
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    let refs: Vec<DeadLetterRef> = all.iter().map(|d| d.reference).collect();
    // Three callers retry the same 200 dead letters at once (each by reference, one
    // "retry all"): every dead letter goes back exactly once.
    let everything = DeadLetterFilter::default();
    let (a, b, c) = tokio::join!(
        pool.retry_dead_letters(&refs),
        pool.retry_dead_letters(&refs),
        pool.retry_all_dead_letters(&everything),
    );
    let mut retried: BTreeMap<DeadLetterRef, usize> = BTreeMap::new();
    for o in a.unwrap().into_iter().chain(b.unwrap()).chain(c.unwrap()) {
        if o.entry_id.is_some() {
            *retried.entry(o.reference).or_default() += 1;
        }
    }
    assert_eq!(retried.len(), 200);
    assert!(
        retried.values().all(|&n| n == 1),
        "a dead letter was retried twice"
    );
    let conn = pool.connection();
    let mut ids = BTreeSet::new();
    for p in 0..2 {
        assert_eq!(xlen(&conn, &pool.layout().dead_letter_stream(p)).await, 0);
        for (_, f) in ids_in(&conn, &pool.layout().partition_stream(p)).await {
            assert_eq!(
                f.keys().cloned().collect::<Vec<_>>(),
                ["id", "payload"],
                "only the task's own fields"
            );
            ids.insert(f["id"].clone());
        }
    }
    assert_eq!(ids.len(), 200, "every task back, once, with its id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_leaves_dead_letters_written_meanwhile_and_loses_none() {
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("m", "m")).await;
    dead_letters(&pool, 0, 0, 500, "old").await;
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for k in 0..20 {
                dead_letters(&pool, 0, 500 + k * 10, 10, "new").await;
                tokio::task::yield_now().await;
            }
        })
    };
    let outcomes = pool
        .retry_all_dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    writer.await.unwrap();
    let conn = pool.connection();
    let (tasks, dead) = (xlen(&conn, "m").await, xlen(&conn, "m:dead").await);
    assert_eq!(
        tasks as usize,
        outcomes.len(),
        "one task per retried dead letter"
    );
    assert!(outcomes.iter().all(|o| o.entry_id.is_some()));
    assert!(
        tasks >= 500,
        "everything there at the start was retried: {tasks}"
    );
    assert_eq!(tasks + dead, 700, "none lost, none doubled");
}

#[tokio::test]
async fn purge_by_reference_by_filter_and_all() {
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("p", "p").with_partitions(2)).await;
    dead_letters(&pool, 0, 0, 10, "permanent failure: HTTP 404").await;
    dead_letters(&pool, 1, 10, 10, "failed 5 times").await;
    let first = pool
        .dead_letters(&DeadLetterFilter::default(), Some(3), false)
        .await
        .unwrap();
    let refs: Vec<DeadLetterRef> = first.iter().map(|d| d.reference).collect();
    assert_eq!(pool.purge_dead_letters(&refs).await.unwrap(), 3);
    assert_eq!(
        pool.purge_dead_letters(&refs).await.unwrap(),
        0,
        "already gone"
    );
    let http = DeadLetterFilter {
        error_contains: Some("HTTP 404".into()),
        consumer: Some("w1".into()),
        ..DeadLetterFilter::default()
    };
    let left_w1 = pool.dead_letters(&http, None, false).await.unwrap().len() as u64;
    assert_eq!(pool.purge_all_dead_letters(&http).await.unwrap(), left_w1);
    assert!(
        pool.dead_letters(&http, None, false)
            .await
            .unwrap()
            .is_empty()
    );
    let st = pool.stats().await.unwrap();
    assert_eq!(st.dead_letters, 20 - 3 - left_w1);
    assert_eq!(
        pool.purge_all_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap(),
        st.dead_letters
    );
    assert_eq!(pool.stats().await.unwrap().dead_letters, 0);
    let bad = DeadLetterRef {
        partition: 2,
        id: EntryId { ms: 1, seq: 0 },
    };
    let e = pool
        .purge_dead_letters(&[bad])
        .await
        .expect_err("no partition 2");
    assert!(e.to_string().contains("partition 2 does not exist"), "{e}");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_connection_error() {
    let port = workpool_worker::testing::free_port().unwrap();
    let url = format!("redis://:secret@127.0.0.1:{port}/0");
    let e = Pool::connect_url(&url, &Tls::none(), Layout::new("q", "q"))
        .await
        .expect_err("nothing listens there");
    assert!(e.is_connection_error(), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("secret"), "{e}");
    let e = Pool::connect_url("redis+cluster://", &Tls::none(), Layout::new("q", "q"))
        .await
        .expect_err("bad URL");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

/// What a worker with results on writes (the canonical result.lua).
async fn write_result(pool: &Pool, partition: usize, task_id: &str, output: &str) {
    let stream = pool.layout().partition_stream(partition);
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/result.lua"),
    )
    .unwrap();
    let mut c = pool.connection();
    let _: i64 = redis::cmd("EVAL")
        .arg(src)
        .arg(2)
        .arg(format!("{stream}:result:{task_id}"))
        .arg(format!("{stream}:notify:{task_id}"))
        .arg(60_000)
        .arg("done")
        .arg("v")
        .arg(1)
        .arg("task_id")
        .arg(task_id)
        .arg("output")
        .arg(output)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_result_whenever_it_is_written_and_status_follows_the_task() {
    use workpool_client::{TaskStatus, WaitError};
    let server = RedisServer::start().expect("redis-server");
    let pool = pool(&server, Layout::new("res", "res").with_partitions(2)).await;
    let task = pool
        .submit(Task::new("{}").with_id("order-1").in_partition(1))
        .await
        .unwrap();
    assert_eq!(
        pool.status(1, "order-1", Some(task.entry_id))
            .await
            .unwrap(),
        TaskStatus::Queued
    );
    let mut c = pool.connection();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("res:1")
        .arg("res")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("res")
        .arg("pod-a")
        .arg("STREAMS")
        .arg("res:1")
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        pool.status(1, "order-1", Some(task.entry_id))
            .await
            .unwrap(),
        TaskStatus::Running {
            consumer: "pod-a".into(),
            deliveries: 1
        }
    );
    // Three waiters, started before or after the write: each gets the one record.
    let waiter =
        |pool: Pool| async move { pool.wait_for(1, "order-1", Duration::from_secs(60)).await };
    let early = tokio::spawn(waiter(pool.clone()));
    let early2 = tokio::spawn(waiter(pool.clone()));
    // Both block on the notification list before the result is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = server.cmd(redis::cmd("INFO").arg("clients")).unwrap();
        if info.contains("blocked_clients:2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiters never blocked: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_result(&pool, 1, "order-1", "thumb.png").await;
    let late = waiter(pool.clone()).await.unwrap();
    for r in [
        early.await.unwrap().unwrap(),
        early2.await.unwrap().unwrap(),
        late,
    ] {
        assert!(r.ok());
        assert_eq!(r.output.as_deref(), Some(&b"thumb.png"[..]));
    }
    // Waking rotates the list onto itself: the one notification stays for later waiters.
    let notes: Vec<String> = redis::cmd("LRANGE")
        .arg("res:1:notify:order-1")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(notes, ["done"]);
    // No result: a timeout, and a task never submitted is unknown.
    match pool.wait_for(0, "never", Duration::from_millis(300)).await {
        Err(WaitError::Timeout(t)) => assert_eq!(t.task_id, "never"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.status(0, "never", None).await.unwrap(),
        TaskStatus::Unknown
    );
    assert_eq!(
        pool.status(0, "never", Some(EntryId { ms: 1, seq: 0 }))
            .await
            .unwrap(),
        TaskStatus::Unknown
    );
}
