//! The queue hub against real redis-servers: every pool's queue is read off the reconcile
//! path, a change triggers the pool's reconcile, writes run before the next read, and one
//! frozen or restarted Redis holds up only its own pools.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use workpool_operator::hub::{Command, QueueHub, Registration};
use workpool_worker::queue::{DrainState, NewTask, Pool, Queue};
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::RedisServer;

fn key(name: &str) -> (String, String) {
    ("ns".to_string(), name.to_string())
}

fn reg(url: &str, stream: &str, poll: Duration) -> Registration {
    Registration {
        target: Target::new(url, &Tls::none()).expect("target"),
        queue: Pool::new(stream, stream),
        poll,
    }
}

/// Waits for a trigger of `name` (other pools' triggers are skipped).
async fn triggered(
    rx: &mut futures::channel::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<workpool_operator::crd::WorkPool>,
    >,
    name: &str,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Ok(Some(r)) if r.name == name => return true,
            Ok(Some(_)) => continue,
            _ => return false,
        }
    }
}

async fn enqueue(url: &str, stream: &str, n: usize) {
    let mut c = workpool_worker::queue::connect(url, None)
        .await
        .expect("connect");
    let q = Queue::new(stream, stream);
    let tasks = vec![NewTask::new(b"{}"); n];
    q.enqueue(&mut c, &tasks).await.expect("xadd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_trigger_on_change_and_writes_run_before_the_next_read() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let (hub, mut rx) = QueueHub::new(None, Duration::from_secs(2));
    hub.register(&key("a"), reg(&url, "a", Duration::from_secs(60)), "poll");
    assert!(
        triggered(&mut rx, "a", Duration::from_secs(5)).await,
        "the first read triggers"
    );
    let s1 = hub.snapshot(&key("a")).expect("read");
    assert_eq!(s1.result.as_ref().map(|s| s.backlog).ok(), Some(0));
    // A read asked for (a wake) sees the new task and triggers; a long poll would not.
    enqueue(&url, "a", 3).await;
    hub.refresh(&key("a"), "wake");
    assert!(
        triggered(&mut rx, "a", Duration::from_secs(5)).await,
        "a changed read triggers"
    );
    let s2 = hub.snapshot(&key("a")).expect("read");
    assert!(s2.seq > s1.seq);
    assert_eq!(s2.result.as_ref().map(|s| s.backlog).ok(), Some(3));
    // The same queue again: a read, no trigger.
    hub.refresh(&key("a"), "poll");
    assert!(
        !triggered(&mut rx, "a", Duration::from_millis(800)).await,
        "nothing changed"
    );
    // A write runs before the read that follows it: the snapshot shows it.
    let asked = workpool_operator::observe::now_ms();
    hub.send(&key("a"), Command::Drain(vec!["a-bbbbb".into()]));
    assert!(triggered(&mut rx, "a", Duration::from_secs(5)).await);
    let s3 = hub.snapshot(&key("a")).expect("read");
    assert!(s3.taken_ms >= asked);
    let st = s3.result.expect("stats");
    assert_eq!(st.draining.get("a-bbbbb"), Some(&DrainState::Requested));
    hub.send(&key("a"), Command::Undrain(vec!["a-bbbbb".into()]));
    assert!(triggered(&mut rx, "a", Duration::from_secs(5)).await);
    assert!(
        hub.snapshot(&key("a"))
            .expect("read")
            .result
            .expect("stats")
            .draining
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_holds_up_only_its_own_pools_and_a_restarted_one_is_read_again() {
    let frozen = RedisServer::start().expect("redis-server");
    let mut other = RedisServer::start().expect("redis-server");
    let (hub, mut rx) = QueueHub::new(None, Duration::from_secs(1));
    let poll = Duration::from_millis(300);
    for i in 0..10 {
        hub.register(
            &key(&format!("f{i}")),
            reg(&frozen.url(), &format!("f{i}"), poll),
            "poll",
        );
    }
    hub.register(&key("o"), reg(&other.url(), "o", poll), "poll");
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 11 && Instant::now() < deadline {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), rx.next()).await {
            seen.insert(r.name);
        }
    }
    assert_eq!(seen.len(), 11, "every pool was read");

    frozen.pause();
    // The other Redis's pool keeps being read while the frozen one's reads hang.
    let before = hub.snapshot(&key("o")).expect("read").seq;
    enqueue(&other.url(), "o", 2).await;
    assert!(
        triggered(&mut rx, "o", Duration::from_secs(5)).await,
        "the other Redis is read"
    );
    assert!(hub.snapshot(&key("o")).expect("read").seq > before);
    // The frozen Redis's pools become unreadable (after the command timeout), never block
    // a caller: snapshots are there to read at any time.
    let t = Instant::now();
    let _ = hub.snapshot(&key("f0"));
    assert!(t.elapsed() < Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(15);
    while hub.snapshot(&key("f0")).is_some_and(|s| s.result.is_ok()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hub.snapshot(&key("f0")).is_some_and(|s| s.result.is_err()),
        "reported unreachable"
    );
    frozen.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..10).all(|i| {
        hub.snapshot(&key(&format!("f{i}")))
            .is_some_and(|s| s.result.is_ok())
    }) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (0..10).all(|i| hub
            .snapshot(&key(&format!("f{i}")))
            .is_some_and(|s| s.result.is_ok())),
        "read again after the freeze"
    );

    // A restart drops the connection: the next read reconnects.
    other.restart().expect("restart");
    enqueue(&other.url(), "o", 1).await;
    hub.refresh(&key("o"), "wake");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hub
        .snapshot(&key("o"))
        .is_some_and(|s| s.result.as_ref().is_ok_and(|st| st.backlog >= 1))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hub.snapshot(&key("o")).is_some_and(|s| s.result.is_ok()),
        "reconnected after the restart"
    );
    // Unregistered pools are no longer read; their reader ends with the last of them.
    for i in 0..10 {
        hub.unregister(&key(&format!("f{i}")));
    }
    assert!(hub.snapshot(&key("f3")).is_none());
}
