//! Drain: the operator tells a worker to stop taking tasks by writing its consumer name
//! into the pool's drain hash (`<stream>:draining`). Against a real redis-server, with two
//! workers holding several long tasks each: the drained worker takes no new task once it
//! said `stopped`, finishes what it holds (nothing interrupted, nothing run twice), says
//! so on `/readyz` and in its metrics, and takes tasks again when the drain is taken back.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Worker, conn, enqueue, http_get, read_lines, side_file, stats, wait_until};
use workpool_worker::queue::{DrainState, Queue};
use workpool_worker::testing::RedisServer;

/// `start <task> <consumer>` lines of a runs file: the consumers that started each task.
fn starts(lines: &[String]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 && f[0] == "start" {
            m.entry(f[1].to_string())
                .or_default()
                .push(f[2].to_string());
        }
    }
    m
}

async fn pending_of(url: &str, q: &Queue, consumer: &str) -> u64 {
    stats(url, q)
        .await
        .consumers
        .iter()
        .find(|c| c.name == consumer)
        .map(|c| c.pending)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_takes_no_new_task_finishes_its_own_and_resumes_when_undrained() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = side_file(&dir, "runs");
    let q = Queue::new("jobs", "pool");
    let payloads = vec!["{}"; 24];
    let ids = enqueue(&url, &q, &payloads).await;
    // maxDeliveries 1: any interruption or second delivery would dead-letter a task.
    let spawn = |name: &str| {
        let script = format!(
            "echo \"start $WORKPOOL_TASK_ID {name}\" >> {runs}; sleep 1; echo \"end $WORKPOOL_TASK_ID\" >> {runs}"
        );
        let args = [
            "--concurrency",
            "3",
            "--max-deliveries",
            "1",
            "--exec",
            "sh",
            "-c",
            script.as_str(),
        ];
        Worker::spawn(&url, "jobs", "pool", name, &args)
    };
    let w1 = spawn("w1");
    let w2 = spawn("w2");
    wait_until(Duration::from_secs(20), "w1 holds tasks", || async {
        pending_of(&url, &q, "w1").await > 0
    })
    .await;

    let mut c = conn(&url).await;
    q.request_drain(&mut c, &["w1".to_string()])
        .await
        .expect("drain w1");
    wait_until(Duration::from_secs(10), "w1 says it stopped", || async {
        stats(&url, &q).await.draining.get("w1") == Some(&DrainState::Stopped)
    })
    .await;
    // From its `stopped` on, w1's pending count never grows (a read would add to it) and
    // falls to zero as its tasks end; meanwhile it is not ready and says why.
    let addr = w1.metrics_addr().await;
    let (code, body) = http_get(addr, "/readyz");
    assert_eq!((code, body.trim()), (503, "draining"));
    assert_eq!(w1.metric("workpool_worker_draining", "").await, 1.0);
    let mut last = pending_of(&url, &q, "w1").await;
    let started_by_w1_at_stop: usize = starts(&read_lines(&runs))
        .values()
        .flatten()
        .filter(|c| *c == "w1")
        .count();
    loop {
        let now = pending_of(&url, &q, "w1").await;
        assert!(
            now <= last,
            "drained w1 took a task: pending {last} -> {now}"
        );
        last = now;
        if now == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // w2 drains the rest; w1 started nothing beyond what it held when it stopped.
    wait_until(Duration::from_secs(60), "w2 ran the rest", || async {
        let st = stats(&url, &q).await;
        st.lag == 0 && st.pending == 0
    })
    .await;
    let w1_starts: usize = starts(&read_lines(&runs))
        .values()
        .flatten()
        .filter(|c| *c == "w1")
        .count();
    let held_at_stop = 3; // its concurrency: the most it can have started but not logged
    assert!(
        w1_starts <= started_by_w1_at_stop + held_at_stop,
        "w1 started {w1_starts} tasks, {started_by_w1_at_stop} logged when it stopped"
    );

    // Taken back: w1 reads again.
    let more = enqueue(&url, &q, &["{}"; 12]).await;
    q.cancel_drain(&mut c, &["w1".to_string()])
        .await
        .expect("undrain w1");
    wait_until(Duration::from_secs(30), "w1 takes tasks again", || async {
        let s = starts(&read_lines(&runs));
        more.iter().any(|id| {
            s.get(&id.to_string())
                .is_some_and(|c| c.contains(&"w1".into()))
        })
    })
    .await;
    wait_until(Duration::from_secs(60), "everything ran", || async {
        let st = stats(&url, &q).await;
        st.lag == 0 && st.pending == 0
    })
    .await;
    let (code, _) = http_get(addr, "/readyz");
    assert_eq!(code, 200, "ready again once undrained");
    assert_eq!(w1.metric("workpool_worker_draining", "").await, 0.0);

    // Every task ran exactly once, none dead-lettered.
    let s = starts(&read_lines(&runs));
    let all: BTreeSet<String> = ids.iter().chain(&more).map(|i| i.to_string()).collect();
    for id in &all {
        assert_eq!(
            s.get(id).map(Vec::len),
            Some(1),
            "task {id} ran once: {s:?}"
        );
    }
    assert_eq!(stats(&url, &q).await.dead_letters, 0);
    drop(w2);
}

/// The acknowledgement never overrules an operator that took the request back, and a
/// value under the drain hash that is not a state is ignored (by the worker and by stats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hash_writes_are_conditional_and_foreign_values_are_ignored() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let mut c = conn(&url).await;
    assert!(
        !q.acknowledge_drain(&mut c, "w1").await.expect("ack"),
        "no request: nothing written"
    );
    assert!(stats(&url, &q).await.draining.is_empty());
    q.request_drain(&mut c, &["w1".into(), "w2".into()])
        .await
        .expect("request");
    assert!(q.acknowledge_drain(&mut c, "w1").await.expect("ack"));
    // A second request keeps the worker's answer.
    q.request_drain(&mut c, &["w1".into()])
        .await
        .expect("request");
    let _: () = redis::cmd("HSET")
        .arg(q.drain_key())
        .arg("w3")
        .arg("something else")
        .query_async(&mut c)
        .await
        .expect("hset");
    let d = stats(&url, &q).await.draining;
    assert_eq!(d.get("w1"), Some(&DrainState::Stopped));
    assert_eq!(d.get("w2"), Some(&DrainState::Requested));
    assert_eq!(d.get("w3"), None);
    q.cancel_drain(&mut c, &["w1".into(), "w2".into()])
        .await
        .expect("cancel");
    assert!(!q.acknowledge_drain(&mut c, "w1").await.expect("ack"));
    assert!(stats(&url, &q).await.draining.is_empty());
    assert_eq!(
        q.drain_state(&mut c, "w3").await.expect("hget"),
        None,
        "a foreign value is no drain"
    );
}

/// A partitioned pool on a real Redis Cluster: the drain hash is the pool's one
/// `{S}:draining` (partition 0's slot), the worker says `stopped` only once it reads no
/// partition, and from then on it takes no task in any partition; taken back, it reads
/// them all again. Every task runs exactly once (maxDeliveries 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_of_a_partitioned_cluster_pool_stops_reading_every_partition() {
    use workpool_worker::queue::Pool;
    use workpool_worker::target::{Target, Tls};
    use workpool_worker::testing::{ClusterOptions, RedisCluster};

    let cluster = RedisCluster::start(ClusterOptions::default()).expect("cluster");
    let url = cluster.url();
    let target = Target::new(&url, &Tls::none()).expect("target");
    let c = target
        .connect(Some(Duration::from_secs(10)))
        .await
        .expect("connect");
    let pool = Pool::new("jobs", "pool")
        .with_partitions(3)
        .with_cluster(true);
    assert_eq!(pool.draining_key(), "{jobs}:draining");
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = side_file(&dir, "runs");
    let enqueue_all = |first: usize, per_partition: usize| {
        let pool = pool.clone();
        let c = c.clone();
        async move {
            let mut n = first;
            for q in pool.queues() {
                let payloads: Vec<String> =
                    (0..per_partition).map(|i| format!("t{}", n + i)).collect();
                n += per_partition;
                let tasks: Vec<workpool_worker::queue::NewTask<'_>> = payloads
                    .iter()
                    .map(|p| workpool_worker::queue::NewTask::new(p.as_bytes()))
                    .collect();
                q.enqueue(&mut c.clone(), &tasks).await.expect("enqueue");
            }
            (first..n).map(|i| format!("t{i}")).collect::<Vec<_>>()
        }
    };
    let pool_stats = || {
        let pool = pool.clone();
        let c = c.clone();
        async move { pool.stats(&c).await.expect("stats") }
    };
    let held = |st: &workpool_worker::queue::QueueStats, name: &str| {
        st.consumers
            .iter()
            .find(|x| x.name == name)
            .map_or(0, |x| x.pending)
    };
    let first = enqueue_all(0, 8).await;
    let spawn = |name: &str| {
        let script = format!(
            "p=$(cat); echo \"start $p {name}\" >> {runs}; sleep 1; echo \"end $p\" >> {runs}"
        );
        let args = [
            "--partitions",
            "3",
            "--concurrency",
            "2",
            "--max-deliveries",
            "1",
            "--exec",
            "sh",
            "-c",
            script.as_str(),
        ];
        Worker::spawn(&url, "jobs", "pool", name, &args)
    };
    let w1 = spawn("w1");
    let w2 = spawn("w2");
    wait_until(Duration::from_secs(30), "w1 holds tasks", || async {
        held(&pool_stats().await, "w1") > 0
    })
    .await;

    pool.partition(0)
        .request_drain(&mut c.clone(), &["w1".to_string()])
        .await
        .expect("drain w1");
    wait_until(Duration::from_secs(20), "w1 says it stopped", || async {
        pool_stats().await.draining.get("w1") == Some(&DrainState::Stopped)
    })
    .await;
    let started_at_stop = starts(&read_lines(&runs))
        .values()
        .flatten()
        .filter(|c| *c == "w1")
        .count();
    let mut last = held(&pool_stats().await, "w1");
    loop {
        let now = held(&pool_stats().await, "w1");
        assert!(now <= last, "drained w1 took a task: held {last} -> {now}");
        last = now;
        if now == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(Duration::from_secs(90), "w2 ran the rest", || async {
        let st = pool_stats().await;
        st.lag == 0 && st.pending == 0
    })
    .await;
    let w1_starts = starts(&read_lines(&runs))
        .values()
        .flatten()
        .filter(|c| *c == "w1")
        .count();
    // Its concurrency: the most it can have started but not yet logged when it stopped.
    assert!(
        w1_starts <= started_at_stop + 2,
        "w1 started {w1_starts} tasks, {started_at_stop} logged when it stopped"
    );

    // Taken back: w1 reads the partitions again.
    let more = enqueue_all(first.len(), 6).await;
    pool.partition(2)
        .cancel_drain(&mut c.clone(), &["w1".to_string()])
        .await
        .expect("undrain w1 (any partition's queue names the pool's hash)");
    wait_until(Duration::from_secs(30), "w1 takes tasks again", || async {
        let s = starts(&read_lines(&runs));
        more.iter()
            .any(|t| s.get(t).is_some_and(|c| c.contains(&"w1".to_string())))
    })
    .await;
    wait_until(Duration::from_secs(90), "everything ran", || async {
        let st = pool_stats().await;
        st.lag == 0 && st.pending == 0
    })
    .await;
    let s = starts(&read_lines(&runs));
    for t in first.iter().chain(&more) {
        assert_eq!(s.get(t).map(Vec::len), Some(1), "task {t} ran once: {s:?}");
    }
    assert_eq!(pool_stats().await.dead_letters, 0);
    drop((w1, w2));
}
