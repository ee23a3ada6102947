//! Redis Cluster: a pool of six partitions (each its own hash slot) on a real three-primary
//! cluster with a replica each, made by `redis-cli --cluster create`, drains 20,000 tasks
//! through a slot migration of one partition (ASK redirects, MIGRATE) and the SIGKILL of
//! a primary (its replica takes over): every confirmed task completes or is
//! dead-lettered exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Recorder, Worker, wait_until};
use workpool_worker::queue::{NewTask, Pool, QueueStats, key_slot};
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::{ClusterOptions, RedisCluster};

async fn pool_stats(target: &Target, pool: &Pool) -> Option<QueueStats> {
    let c = target.connect(Some(Duration::from_secs(5))).await.ok()?;
    pool.stats(&c).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_partitions_drain_through_a_slot_migration_and_a_failover() {
    let mut cluster = RedisCluster::start(ClusterOptions {
        primaries: 3,
        replicas_per_primary: 1,
        ..ClusterOptions::default()
    })
    .expect("redis cluster");
    let url = cluster.url();
    let target = Target::new(&url, &Tls::none()).expect("target");
    let pool = Pool::new("jobs", "pool")
        .with_partitions(6)
        .with_cluster(true);
    pool.validate().expect("valid pool");
    let slots: Vec<u16> = pool
        .queues()
        .iter()
        .map(|q| key_slot(q.stream().as_bytes()))
        .collect();
    let owners: HashSet<usize> = slots
        .iter()
        .filter_map(|s| cluster.node_of_slot(*s))
        .collect();
    assert!(
        owners.len() >= 2,
        "the partitions spread over the nodes: {owners:?}"
    );

    let handler = Recorder::start().await;
    let n = 20_000;
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            // 97 = 1 mod 6: failures in every partition, so each has a dead-letter stream
            // (the slot migration moves two keys).
            if i % 97 == 7 {
                "perm 0".to_string()
            } else if i % 500 == 3 {
                "ok 1.5".to_string()
            } else {
                "ok 0".to_string()
            }
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let mut confirmed: HashSet<String> = HashSet::new();
    {
        let c = target
            .connect(Some(Duration::from_secs(10)))
            .await
            .expect("connect");
        for q in pool.queues() {
            q.ensure_group(&mut c.clone()).await.expect("group");
        }
        // Round robin over the partitions, 500 tasks per pipeline, each pipeline confirmed
        // by a replica (WAIT on the node of its slot).
        let per: Vec<Vec<usize>> = (0..6).map(|p| (p..n).step_by(6).collect()).collect();
        for (p, idx) in per.iter().enumerate() {
            let q = pool.partition(p);
            for chunk in idx.chunks(500) {
                let tasks: Vec<NewTask<'_>> = chunk
                    .iter()
                    .map(|&i| NewTask {
                        payload: payloads[i].as_bytes(),
                        id: Some(&ids[i]),
                        attempt: None,
                    })
                    .collect();
                let (got, acked) = q
                    .enqueue_wait(&mut c.clone(), &tasks, 1, Duration::from_secs(5))
                    .await
                    .expect("durable enqueue");
                assert_eq!(got.len(), chunk.len());
                if acked >= 1 {
                    confirmed.extend(chunk.iter().map(|&i| ids[i].clone()));
                }
            }
        }
    }
    assert_eq!(confirmed.len(), n, "every primary has a live replica");
    let st = pool_stats(&target, &pool).await.expect("stats");
    assert_eq!(st.backlog, n as u64);
    assert_eq!(st.partitions.len(), 6);
    assert!(
        st.partitions
            .iter()
            .all(|p| p.backlog == (n / 6) as u64 || p.backlog == (n / 6 + 1) as u64)
    );

    let workers: Vec<Worker> = (0..4)
        .map(|k| {
            Worker::spawn(
                &url,
                "jobs",
                "pool",
                &format!("w{k}"),
                &[
                    "--partitions",
                    "6",
                    "--concurrency",
                    "32",
                    "--visibility-timeout",
                    "3",
                    "--http",
                    &handler.url,
                ],
            )
        })
        .collect();

    wait_until(Duration::from_secs(120), "a quarter done", || async {
        handler.completed() >= n / 4
    })
    .await;
    // Partition 2's slot moves to another primary while the workers drain it: ASK
    // redirects while the slot is migrating, MOVED after.
    let slot = slots[2];
    let from = cluster.node_of_slot(slot).expect("owner");
    let to = *cluster
        .primaries()
        .iter()
        .find(|&&p| p != from)
        .expect("another primary");
    let moved = cluster
        .migrate_slot(slot, to, Duration::from_millis(500))
        .expect("slot migration");
    assert_eq!(cluster.node_of_slot(slot), Some(to));
    eprintln!("moved slot {slot} ({moved} keys) from node {from} to node {to}");
    assert!(
        moved >= 2,
        "the partition's stream and dead-letter stream moved"
    );

    wait_until(Duration::from_secs(120), "half done", || async {
        handler.completed() >= n / 2
    })
    .await;
    // No worker died and nothing failed over yet: nothing ran twice.
    let (started, _, _) = handler.counts();
    let twice: Vec<&String> = started
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "tasks ran twice across the slot migration: {twice:?}"
    );

    // Kill the primary of partition 4's slot; its replica takes over.
    let victim = cluster.node_of_slot(slots[4]).expect("owner");
    cluster.nodes[victim].stop();
    let promoted = cluster
        .wait_for_promotion(slots[4], victim, Duration::from_secs(60))
        .expect("the replica takes over");
    eprintln!(
        "killed node {victim}; node {promoted} took over slot {}",
        slots[4]
    );

    wait_until(
        Duration::from_secs(240),
        "every partition drained",
        || async {
            pool_stats(&target, &pool)
                .await
                .is_some_and(|st| st.stream_length == 0 && st.pending == 0)
        },
    )
    .await;
    let (started, ended, _) = handler.counts();
    let c = target
        .connect(Some(Duration::from_secs(10)))
        .await
        .expect("connect");
    let mut dead_by_id: HashMap<String, Vec<String>> = HashMap::new();
    for q in pool.queues() {
        let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(q.dead_letter_stream())
            .arg("-")
            .arg("+")
            .query_async(&mut c.clone())
            .await
            .expect("dead letters");
        for (_, f) in dead {
            assert_eq!(f.get("stream").map(String::as_str), Some(q.stream()));
            dead_by_id
                .entry(f.get("id").cloned().unwrap_or_default())
                .or_default()
                .push(f.get("error").cloned().unwrap_or_default());
        }
    }
    let mut extra = 0;
    for (i, id) in ids.iter().enumerate() {
        if payloads[i].starts_with("perm") {
            let reasons = dead_by_id.get(id).cloned().unwrap_or_default();
            assert_eq!(
                reasons.len(),
                1,
                "{id}: dead-lettered exactly once: {reasons:?}"
            );
            assert!(
                reasons[0].starts_with("permanent failure"),
                "{id}: {reasons:?}"
            );
        } else {
            assert!(
                !dead_by_id.contains_key(id),
                "{id} must not be dead-lettered"
            );
            assert!(
                ended.get(id).copied().unwrap_or(0) >= 1,
                "{id} was confirmed and never completed"
            );
        }
        extra += started.get(id).copied().unwrap_or(0).saturating_sub(1);
    }
    eprintln!("{extra} extra runs, all after the primary's death");
    for mut w in workers {
        w.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(w.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// `submit` spreads over the partitions of a cluster pool (and `--key` pins one), `stats`
/// sums them, and a stream name carrying a hash tag is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_stats_on_a_cluster_pool() {
    let cluster = RedisCluster::start(ClusterOptions::default()).expect("redis cluster");
    let url = cluster.url();
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .output()
            .expect("run")
    };
    let out = cli(&[
        "submit",
        "--redis-url",
        &url,
        "--stream",
        "s",
        "--partitions",
        "3",
        "--payload",
        "{}",
        "--count",
        "300",
        "--min-replicas",
        "1",
        "--wait-timeout",
        "0.1",
    ]);
    // No replicas: enqueued, but not confirmed.
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "submit",
        "--redis-url",
        &url,
        "--stream",
        "s",
        "--partitions",
        "3",
        "--payload",
        "{}",
        "--count",
        "30",
        "--key",
        "customer-42",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "stats",
        "--redis-url",
        &url,
        "--stream",
        "s",
        "--partitions",
        "3",
        "--group",
        "g",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(st["stream_length"], 330, "{st}");
    assert_eq!(st["backlog"], 330, "{st}");
    let keyed = Pool::new("s", "g")
        .with_partitions(3)
        .partition_for_key(b"customer-42");
    for p in 0..3 {
        let want = 100 + if p == keyed { 30 } else { 0 };
        assert_eq!(
            st["partitions"][p]["stream_length"], want,
            "partition {p}: {st}"
        );
        let name = if p == 0 {
            "{s}".to_string()
        } else {
            format!("{{s:{p}}}")
        };
        assert_eq!(st["partitions"][p]["stream"], name.as_str());
    }
    let out = cli(&[
        "stats",
        "--redis-url",
        &url,
        "--stream",
        "{s}",
        "--group",
        "g",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must not contain { or }"), "{err}");
}
