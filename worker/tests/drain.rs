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
