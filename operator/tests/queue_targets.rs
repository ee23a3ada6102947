//! The operator's Redis connections on every kind of target, against real servers: the
//! queue probe reads a pool through the sentinels and follows a failover (the numbers
//! stay right, the probe recovers), wake from zero still wakes after a failover and
//! watches every partition of a pool on a Redis Cluster, and a private CA with client
//! certificates is reached while a wrong CA is reported as `TLSFailed`.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use workpool_operator::probe::{ProbeError, QueueProbe};
use workpool_operator::wake::{Wake, WakeTarget};
use workpool_worker::queue::{NewTask, Pool, QueueStats};
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

async fn probe_until_ok(
    probe: &QueueProbe,
    target: &Target,
    pool: &Pool,
) -> (QueueStats, Vec<ProbeError>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut errors = Vec::new();
    loop {
        match probe.stats(target, pool).await {
            Ok(st) => return (st, errors),
            Err(e) => errors.push(e),
        }
        assert!(
            Instant::now() < deadline,
            "the probe never recovered: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_and_wake_follow_a_sentinel_failover() {
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
    let probe = QueueProbe::new(Duration::from_secs(2));
    let before = probe.stats(&target, &pool).await.expect("stats");
    assert_eq!((before.backlog, before.pending), (30, 4));
    assert_eq!(before.partitions.len(), 3);
    assert_eq!(before.consumers.len(), 1);

    // A pool at zero on another stream, watched through the sentinels.
    let (wake, mut woken) = Wake::new(None, true);
    let other = Pool::new("idle", "pool");
    let idle_st = probe
        .stats(&target, &other)
        .await
        .expect("stats of an empty pool");
    let key = ("ns".to_string(), "idle".to_string());
    wake.watch(&key, Some(WakeTarget::from_stats(target.clone(), &idle_st)));

    let old = set.kill_primary().expect("kill the primary");
    // Probe as the operator does while the sentinels have not promoted anyone yet.
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while set.primary().is_none_or(|p| p == old) {
        if let Err(e) = probe.stats(&target, &pool).await {
            errors.push(e);
        }
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!errors.is_empty(), "the probe noticed the primary was gone");
    let new = set
        .wait_for_failover(old, Duration::from_secs(60))
        .expect("failover");
    let (after, more) = probe_until_ok(&probe, &target, &pool).await;
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
        "failover from server {old} to {new}; {} probe errors meanwhile",
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
    let probe = QueueProbe::new(Duration::from_secs(2));
    let st = probe.stats(&target, &pool).await.expect("stats");
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
    let st = probe.stats(&target, &pool).await.expect("stats");
    assert_eq!(st.backlog, 1);
    assert_eq!(st.partitions[3].backlog, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reaches_a_private_ca_with_mtls_and_reports_a_wrong_ca_as_tls_failed() {
    let redis = RedisServer::start_mtls().expect("redis with mTLS");
    let ca: Arc<TestCa> = redis.ca().expect("ca").clone();
    let url = redis.tls_url().expect("tls url");
    let pool = Pool::new("t", "g");
    let probe = QueueProbe::new(Duration::from_secs(2));
    let ok = Target::new(&url, &ca.client_tls().expect("tls")).expect("target");
    let st = probe.stats(&ok, &pool).await.expect("stats over mTLS");
    assert!(!st.stream_exists);

    let other = TestCa::new().expect("another CA");
    let wrong = Target::new(&url, &other.client_tls().expect("tls")).expect("target");
    let e = probe.stats(&wrong, &pool).await.expect_err("a wrong CA");
    assert_eq!(e.reason(), "TLSFailed", "{e:?}");
    assert_eq!(e.metric_label(), "tls");
    assert!(!e.to_string().contains(&url), "no URL in the message: {e}");
    eprintln!("wrong CA: {e}");

    let no_cert = Target::new(
        &url,
        &Tls::with_ca(std::fs::read(ca.ca_file()).expect("ca")),
    )
    .expect("target");
    let e = probe
        .stats(&no_cert, &pool)
        .await
        .expect_err("no client certificate");
    eprintln!("no client certificate: {e}");
    assert!(
        matches!(e.reason(), "TLSFailed" | "Unreachable"),
        "a refused handshake: {e:?}"
    );
}
