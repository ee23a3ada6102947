//! The operator's Redis connections on every kind of target, against real servers: the
//! queue hub reads a pool through the sentinels and follows a failover (the numbers stay
//! right, the reads recover), wake from zero still wakes after a failover and watches
//! every partition of a pool on a Redis Cluster, drains of a partitioned pool on a Cluster
//! go to its one drain hash, and a private CA with client certificates is reached while a
//! wrong CA is reported as `TLSFailed` (the hub keeps one reader per URL + TLS material).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use workpool_operator::hub::{Command, QueueHub, Registration};
use workpool_operator::probe::ProbeError;
use workpool_operator::wake::{Wake, WakeTarget};
use workpool_worker::queue::{DrainState, NewTask, Pool, QueueStats};
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::{
    ClusterOptions, RedisCluster, RedisServer, SentinelOptions, SentinelSet, TestCa,
};

async fn enqueue(target: &Target, pool: &Pool, per_partition: usize) {
    let c = target
        .connect(Some(Duration::from_secs(10)))
        .await
        .expect("connect");
    for q in pool.queues() {
        let tasks: Vec<NewTask<'_>> = (0..per_partition).map(|_| NewTask::new(b"{}")).collect();
        q.enqueue(&mut c.clone(), &tasks).await.expect("enqueue");
    }
}

/// The operator's reader of the pools' queues, with command timeouts of 2 s.
struct Reader {
    hub: QueueHub,
    // The hub's reconcile triggers, kept open (not looked at).
    _triggers: futures::channel::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<workpool_operator::crd::WorkPool>,
    >,
}

impl Reader {
    fn new() -> Reader {
        let (hub, triggers) = QueueHub::new(None, Duration::from_secs(2));
        Reader {
            hub,
            _triggers: triggers,
        }
    }

    /// Registers `pool` on `target` under the name `name` (a long poll: reads happen when
    /// asked for).
    fn register(&self, name: &str, target: &Target, pool: &Pool) -> (String, String) {
        let key = ("ns".to_string(), name.to_string());
        self.hub.register(
            &key,
            Registration {
                target: target.clone(),
                queue: pool.clone(),
                poll: Duration::from_secs(600),
            },
            "poll",
        );
        key
    }

    /// A new read of the pool, as the operator's hub makes it.
    async fn read(&self, key: &(String, String)) -> Result<QueueStats, ProbeError> {
        let before = self.hub.snapshot(key).map_or(0, |s| s.seq);
        self.hub.refresh(key, "poll");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.hub.snapshot(key)
                && s.seq > before
            {
                return s.result;
            }
            assert!(Instant::now() < deadline, "the hub never read {key:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `command` and returns the read that follows it.
    async fn write(
        &self,
        key: &(String, String),
        command: Command,
    ) -> Result<QueueStats, ProbeError> {
        let before = self.hub.snapshot(key).map_or(0, |s| s.seq);
        self.hub.send(key, command);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.hub.snapshot(key)
                && s.seq > before
            {
                return s.result;
            }
            assert!(Instant::now() < deadline, "the hub never wrote {key:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn read_until_ok(reader: &Reader, key: &(String, String)) -> (QueueStats, Vec<ProbeError>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut errors = Vec::new();
    loop {
        match reader.read(key).await {
            Ok(st) => return (st, errors),
            Err(e) => errors.push(e),
        }
        assert!(
            Instant::now() < deadline,
            "the reads never recovered: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_and_wake_follow_a_sentinel_failover() {
    let mut set = SentinelSet::start(SentinelOptions::default()).expect("sentinel set");
    let target = Target::new(&set.url(), &Tls::none()).expect("target");
    let pool = Pool::new("jobs", "pool").with_partitions(3);
    enqueue(&target, &pool, 10).await;
    // A consumer holds 4 tasks of partition 1 (through the primary, replicated).
    {
        let mut c = target
            .connect(Some(Duration::from_secs(5)))
            .await
            .expect("connect");
        let q = pool.partition(1);
        q.ensure_group(&mut c).await.expect("group");
        let got = q
            .read(&mut c, "w1", 4, Duration::from_millis(100))
            .await
            .expect("read");
        assert_eq!(got.len(), 4);
        let _: i64 = redis::cmd("WAIT")
            .arg(2)
            .arg(2000)
            .query_async(&mut c)
            .await
            .expect("wait");
    }
    let reader = Reader::new();
    let jobs = reader.register("jobs", &target, &pool);
    let before = reader.read(&jobs).await.expect("stats");
    assert_eq!((before.backlog, before.pending), (30, 4));
    assert_eq!(before.partitions.len(), 3);
    assert_eq!(before.consumers.len(), 1);

    // A pool at zero on another stream, watched through the sentinels.
    let (wake, mut woken) = Wake::new(None, true);
    let other = Pool::new("idle", "pool");
    let idle = reader.register("idle", &target, &other);
    let idle_st = reader.read(&idle).await.expect("stats of an empty pool");
    let key = ("ns".to_string(), "idle".to_string());
    wake.watch(&key, Some(WakeTarget::from_stats(target.clone(), &idle_st)));

    let old = set.kill_primary().expect("kill the primary");
    // Read as the operator does while the sentinels have not promoted anyone yet.
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while set.primary().is_none_or(|p| p == old) {
        if let Err(e) = reader.read(&jobs).await {
            errors.push(e);
        }
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!errors.is_empty(), "the reads noticed the primary was gone");
    let new = set
        .wait_for_failover(old, Duration::from_secs(60))
        .expect("failover");
    let (after, more) = read_until_ok(&reader, &jobs).await;
    errors.extend(more);
    for e in &errors {
        assert!(
            matches!(e, ProbeError::Unreachable(_)),
            "only Unreachable while the primary is gone: {e:?}"
        );
        assert_eq!(e.reason(), "Unreachable");
    }
    // The same queue on the new primary: nothing lost, the consumer still holds its 4.
    assert_eq!(
        (after.backlog, after.pending),
        (before.backlog, before.pending)
    );
    assert_eq!(after.stream_length, before.stream_length);
    assert_eq!(after.consumers[0].name, "w1");
    assert_eq!(after.consumers[0].pending, 4);
    eprintln!(
        "failover from server {old} to {new}; {} read errors meanwhile",
        errors.len()
    );

    // The first task of the idle pool, written to the new primary, wakes it.
    enqueue(&target, &other, 1).await;
    let got = tokio::time::timeout(Duration::from_secs(45), woken.next())
        .await
        .expect("woken within 45s after the failover")
        .expect("a pool reference");
    assert_eq!(got.name, "idle");
    assert!(wake.take_woken(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_watches_every_partition_of_a_cluster_pool() {
    let cluster = RedisCluster::start(ClusterOptions::default()).expect("cluster");
    let target = Target::new(&cluster.url(), &Tls::none()).expect("target");
    let pool = Pool::new("zero", "pool")
        .with_partitions(4)
        .with_cluster(true);
    let reader = Reader::new();
    let zero = reader.register("zero", &target, &pool);
    let st = reader.read(&zero).await.expect("stats");
    assert_eq!(st.backlog, 0);
    let w = WakeTarget::from_stats(target.clone(), &st);
    assert_eq!(
        w.streams
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["{zero}", "{zero:1}", "{zero:2}", "{zero:3}"]
    );
    let (wake, mut woken) = Wake::new(None, true);
    let key = ("ns".to_string(), "zero".to_string());
    wake.watch(&key, Some(w));
    // Nothing yet.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), woken.next())
            .await
            .is_err()
    );
    // A task in partition 3 only (its own slot, maybe its own node).
    let c = target
        .connect(Some(Duration::from_secs(5)))
        .await
        .expect("connect");
    pool.partition(3)
        .enqueue(&mut c.clone(), &[NewTask::new(b"{}")])
        .await
        .expect("enqueue");
    let got = tokio::time::timeout(Duration::from_secs(20), woken.next())
        .await
        .expect("woken")
        .expect("a pool reference");
    assert_eq!(got.name, "zero");
    let st = reader.read(&zero).await.expect("stats");
    assert_eq!(st.backlog, 1);
    assert_eq!(st.partitions[3].backlog, 1);
}

/// A partitioned pool on a Cluster: the hub sums every partition (each read from its
/// node), and drains, their answers and consumer removal work on the pool's one drain
/// hash `{S}:draining` (partition 0's slot) and in every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_drains_and_removes_consumers_of_a_partitioned_pool_on_a_cluster() {
    let cluster = RedisCluster::start(ClusterOptions::default()).expect("cluster");
    let target = Target::new(&cluster.url(), &Tls::none()).expect("target");
    let pool = Pool::new("parts", "pool")
        .with_partitions(3)
        .with_cluster(true);
    enqueue(&target, &pool, 5).await;
    let c = target
        .connect(Some(Duration::from_secs(5)))
        .await
        .expect("connect");
    // Consumer w1 holds 2 tasks in partition 2 and 1 in partition 0; w2 holds nothing.
    for (partition, consumer, n) in [(2, "w1", 2), (0, "w1", 1), (1, "w2", 0)] {
        let q = pool.partition(partition);
        q.ensure_group(&mut c.clone()).await.expect("group");
        let got = q
            .read(
                &mut c.clone(),
                consumer,
                n.max(1),
                Duration::from_millis(100),
            )
            .await
            .expect("read");
        if n == 0 {
            q.ack(
                &mut c.clone(),
                &got.iter().map(|e| e.id).collect::<Vec<_>>(),
            )
            .await
            .expect("ack");
        }
    }
    let reader = Reader::new();
    let key = reader.register("parts", &target, &pool);
    let st = reader.read(&key).await.expect("stats");
    assert_eq!(st.partitions.len(), 3);
    assert_eq!((st.backlog, st.pending), (14, 3));
    let held = |st: &QueueStats, name: &str| {
        st.consumers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.pending)
    };
    assert_eq!(held(&st, "w1"), Some(3));
    assert_eq!(held(&st, "w2"), Some(0));

    let st = reader
        .write(&key, Command::Drain(vec!["w1".into(), "w2".into()]))
        .await
        .expect("drain");
    assert_eq!(st.draining.get("w1"), Some(&DrainState::Requested));
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(pool.draining_key())
        .query_async(&mut c.clone())
        .await
        .expect("hkeys");
    assert_eq!(pool.draining_key(), "{parts}:draining");
    assert_eq!(fields.len(), 2, "one drain hash for the pool: {fields:?}");
    // A worker reading partition 2 answers in the pool's hash too.
    assert!(
        pool.partition(2)
            .acknowledge_drain(&mut c.clone(), "w2")
            .await
            .expect("ack drain")
    );
    let st = reader.read(&key).await.expect("stats");
    assert_eq!(st.draining.get("w2"), Some(&DrainState::Stopped));
    assert!(st.partitions.iter().all(|p| p.draining.is_empty()));

    // Removal: w2 holds nothing anywhere and goes (with its drain field); w1 holds tasks
    // in two partitions and stays in every one.
    let st = reader
        .write(
            &key,
            Command::RemoveConsumers(vec!["w1".into(), "w2".into()]),
        )
        .await
        .expect("remove");
    assert_eq!(held(&st, "w2"), None);
    assert_eq!(held(&st, "w1"), Some(3));
    assert!(!st.draining.contains_key("w2"));
    assert_eq!(st.draining.get("w1"), Some(&DrainState::Requested));
    let st = reader
        .write(&key, Command::Undrain(vec!["w1".into()]))
        .await
        .expect("undrain");
    assert!(st.draining.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reaches_a_private_ca_with_mtls_and_reports_a_wrong_ca_as_tls_failed() {
    let redis = RedisServer::start_mtls().expect("redis with mTLS");
    let ca: Arc<TestCa> = redis.ca().expect("ca").clone();
    let url = redis.tls_url().expect("tls url");
    let pool = Pool::new("t", "g");
    let reader = Reader::new();
    let ok = Target::new(&url, &ca.client_tls().expect("tls")).expect("target");
    let good = reader.register("good", &ok, &pool);
    let st = reader.read(&good).await.expect("stats over mTLS");
    assert!(!st.stream_exists);

    // The same URL with another CA is another target: its own reader, its own result.
    let other = TestCa::new().expect("another CA");
    let wrong = Target::new(&url, &other.client_tls().expect("tls")).expect("target");
    assert_ne!(ok, wrong);
    let bad = reader.register("bad", &wrong, &pool);
    let e = reader.read(&bad).await.expect_err("a wrong CA");
    assert_eq!(e.reason(), "TLSFailed", "{e:?}");
    assert_eq!(e.metric_label(), "tls");
    assert!(!e.to_string().contains(&url), "no URL in the message: {e}");
    eprintln!("wrong CA: {e}");

    let no_cert = Target::new(
        &url,
        &Tls::with_ca(std::fs::read(ca.ca_file()).expect("ca")),
    )
    .expect("target");
    let nc = reader.register("no-cert", &no_cert, &pool);
    let e = reader.read(&nc).await.expect_err("no client certificate");
    eprintln!("no client certificate: {e}");
    assert!(
        matches!(e.reason(), "TLSFailed" | "Unreachable"),
        "a refused handshake: {e:?}"
    );
    // The pool with the right material is still read.
    assert!(reader.read(&good).await.is_ok());
}
