//! Sentinel: a pool on a Sentinel-managed primary (1 primary, 2 replicas, 3 sentinels,
//! real `redis-server`/`redis-sentinel` processes on loopback) drains through a SIGKILL
//! of the primary: the sentinels promote a replica, the workers follow it, and every task
//! that was confirmed by a replica (`WAIT`) completes or is dead-lettered exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{BIN, Recorder, Worker, wait_until};
use workpool_worker::queue::{NewTask, Pool, QueueStats};
use workpool_worker::target::{Target, Tls};
use workpool_worker::testing::{SentinelOptions, SentinelSet};

/// The `id` fields of a stream's entries on one server (read on its plain port).
fn ids_in(server: &workpool_worker::testing::RedisServer, stream: &str) -> HashSet<String> {
    let entries: Vec<(String, HashMap<String, String>)> = server
        .cmd(redis::cmd("XRANGE").arg(stream).arg("-").arg("+"))
        .unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|(_, f)| f.get("id").cloned())
        .collect()
}

async fn pool_stats(target: &Target, pool: &Pool) -> Option<QueueStats> {
    let c = target.connect(Some(Duration::from_secs(5))).await.ok()?;
    pool.stats(&c).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_drain_loses_no_confirmed_task() {
    let mut set = SentinelSet::start(SentinelOptions::default()).expect("sentinel set");
    let url = set.url();
    let target = Target::new(&url, &Tls::none()).expect("target");
    let pool = Pool::new("jobs", "pool");
    let q = pool.partition(0);
    let handler = Recorder::start().await;

    // 5,000 tasks: mostly instant, some long (past the failover), 1 in 50 fails for good.
    let n = 5000;
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            if i % 50 == 7 {
                "perm 0".to_string()
            } else if i % 40 == 3 {
                format!("ok {:.2}", 1.0 + (i % 3) as f64 * 0.5)
            } else {
                "ok 0".to_string()
            }
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let mut confirmed: HashSet<String> = HashSet::new();
    {
        let mut c = target
            .connect(Some(Duration::from_secs(10)))
            .await
            .expect("connect");
        q.ensure_group(&mut c).await.expect("group");
        for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
            let tasks: Vec<NewTask<'_>> = chunk
                .iter()
                .map(|&i| NewTask {
                    payload: payloads[i].as_bytes(),
                    id: Some(&ids[i]),
                    attempt: None,
                })
                .collect();
            let (got, acked) = q
                .enqueue_wait(&mut c, &tasks, 1, Duration::from_secs(5))
                .await
                .expect("durable enqueue");
            assert_eq!(got.len(), chunk.len());
            if acked >= 1 {
                confirmed.extend(chunk.iter().map(|&i| ids[i].clone()));
            }
        }
    }
    assert_eq!(
        confirmed.len(),
        n,
        "with two live replicas every task is confirmed"
    );

    let workers: Vec<Worker> = (0..4)
        .map(|k| {
            Worker::spawn(
                &url,
                "jobs",
                "pool",
                &format!("w{k}"),
                &[
                    "--concurrency",
                    "16",
                    "--visibility-timeout",
                    "3",
                    "--http",
                    &handler.url,
                ],
            )
        })
        .collect();

    // Mid-drain: a third of the tasks done.
    wait_until(
        Duration::from_secs(120),
        "a third of the tasks done",
        || async { handler.completed() >= n / 3 },
    )
    .await;
    // Freeze the primary, so that the picture below is the last one it can change: what
    // the workers hold, what ran, and what each replica got.
    let old = set.primary().expect("a primary");
    let epoch = set.config_epoch().expect("the sentinels' epoch");
    set.servers[old].pause();
    // Replies already sent reach the workers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held_at_kill = 0.0;
    for w in &workers {
        held_at_kill += w.metric("workpool_worker_in_flight_tasks", "").await;
    }
    let (_, _, finished_before) = handler.counts();
    let replica_ids: HashMap<usize, HashSet<String>> = (0..set.servers.len())
        .filter(|&i| i != old)
        .map(|i| (i, ids_in(&set.servers[i], "jobs")))
        .collect();
    set.servers[old].kill_frozen();
    let killed_at = Instant::now();
    let new = set
        .wait_for_failover(old, Duration::from_secs(60))
        .expect("a replica is promoted");
    eprintln!(
        "primary {old} killed; replica {new} promoted after {:.1}s",
        killed_at.elapsed().as_secs_f64()
    );

    wait_until(
        Duration::from_secs(180),
        "the queue drained on the new primary",
        || async {
            pool_stats(&target, &pool)
                .await
                .is_some_and(|st| st.stream_length == 0 && st.pending == 0)
        },
    )
    .await;
    let (started, ended, _) = handler.counts();
    let dead: Vec<(String, HashMap<String, String>)> = set.servers[new]
        .cmd(redis::cmd("XRANGE").arg("jobs:dead").arg("-").arg("+"))
        .expect("dead letters");
    let mut dead_by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (_, f) in &dead {
        dead_by_id
            .entry(f.get("id").cloned().unwrap_or_default())
            .or_default()
            .push(f.get("error").cloned().unwrap_or_default());
    }
    // Every confirmed task completed (at least once) or is dead-lettered exactly once with
    // its reason: none lost.
    let mut duplicates = 0;
    for (i, id) in ids.iter().enumerate() {
        assert!(confirmed.contains(id));
        if payloads[i].starts_with("perm") {
            let reasons = dead_by_id.get(id).cloned().unwrap_or_default();
            assert_eq!(
                reasons.len(),
                1,
                "{id} must be dead-lettered exactly once: {reasons:?}"
            );
            assert!(
                reasons[0].starts_with("permanent failure"),
                "{id}: reason {:?}",
                reasons[0]
            );
            assert_eq!(ended.get(id), None, "{id} never completes");
        } else {
            assert!(
                !dead_by_id.contains_key(id),
                "{id} must not be dead-lettered"
            );
            let e = ended.get(id).copied().unwrap_or(0);
            assert!(
                e >= 1,
                "{id} never completed (started {:?})",
                started.get(id)
            );
        }
        duplicates += started.get(id).copied().unwrap_or(0).saturating_sub(1);
    }
    // One failover, not two: on a machine too slow for the sentinels' down-after time a
    // second one may follow (the new primary not answering in time), and each failover
    // may lose what its primary had not replicated; the bound below is for one.
    assert_eq!(
        set.config_epoch(),
        Some(epoch + 1),
        "exactly one failover (the machine was too slow for sentinel down-after-milliseconds)"
    );
    // Extra runs: at most the tasks the workers held at the kill plus the completions the
    // promoted replica had not yet seen acknowledged (their acknowledgement died with the
    // primary).
    let unreplicated_acks = finished_before
        .keys()
        .filter(|id| replica_ids[&new].contains(*id))
        .count();
    let bound = held_at_kill as usize + unreplicated_acks;
    eprintln!(
        "failover: {duplicates} extra runs; bound {bound} = {held_at_kill} held at the kill + {unreplicated_acks} acknowledgements not replicated"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} extra runs, more than the {bound} tasks held or unreplicated at the kill"
    );
    for mut w in workers {
        w.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(w.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// `submit --min-replicas` confirms tasks the replicas have and lists (exit 3) those it
/// could not confirm; `stats` reads the same pool through the sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_submit_through_sentinel_confirms_or_lists_each_task() {
    let set = SentinelSet::start(SentinelOptions {
        replicas: 1,
        ..SentinelOptions::default()
    })
    .expect("sentinel set");
    let url = set.url();
    let run = |args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("output")
    };
    let lines: String = (0..300).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let out = run(
        &[
            "submit",
            "--redis-url",
            &url,
            "--stream",
            "d",
            "--stdin",
            "--min-replicas",
            "1",
        ],
        &lines,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("enqueued 300"), "{stdout}");
    assert!(
        stdout.contains("confirmed by at least 1 replica: 300"),
        "{stdout}"
    );
    // Two replicas asked for, one exists: nothing can be confirmed, each task is listed.
    let out = run(
        &[
            "submit",
            "--redis-url",
            &url,
            "--stream",
            "d",
            "--stdin",
            "--min-replicas",
            "2",
            "--wait-timeout",
            "0.2",
        ],
        "{\"a\":1}\n{\"a\":2}\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("confirmed by at least 2 replicas: 0"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("not confirmed: task").count(), 2, "{stdout}");
    assert!(
        stderr.contains("2 of 2 tasks were not confirmed"),
        "{stderr}"
    );
    // The tasks are in the queue all the same.
    let out = run(
        &[
            "stats",
            "--redis-url",
            &url,
            "--stream",
            "d",
            "--group",
            "g",
            "--json",
        ],
        "",
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    assert_eq!(st["stream_length"], 302, "{st}");
    assert_eq!(st["partitions"][0]["stream"], "d");
}
