//! The wake-from-zero benchmark (`make bench-wake`): a program, not a test. Its Cargo
//! target has `test = false`, so `cargo test` does not run it; it runs when asked for and
//! asserts nothing: it measures. It uses the operator e2e support code.
#![forbid(unsafe_code)]

#[path = "../tests/operator_support/mod.rs"]
mod operator_support;

use std::time::{Duration, Instant};

use operator_support::*;
use serde_json::json;

/// One mode of the wake benchmark: `reps` first tasks submitted to a pool at zero, each
/// timed from just before its `XADD` to the local receipt of the pod's ADDED watch event.
async fn wake_latencies(
    env: &Env,
    op: &Operator,
    watch_registration: bool,
    reps: usize,
    pods_seen: &mut futures::channel::mpsc::UnboundedReceiver<(String, Instant)>,
    seed: &mut u64,
) -> Vec<Duration> {
    use futures::StreamExt;
    let mut conn = workpool_worker::queue::connect(&env.redis.url(), None)
        .await
        .expect("redis connects");
    let queue = workpool_worker::queue::Queue::new("bench", "bench");
    let mut out = Vec::new();
    for i in 0..reps {
        env.wait_pool("bench", "at zero", T, |v| {
            v["status"]["desiredReplicas"] == json!(0) && v["status"]["replicas"] == json!(0)
        })
        .await;
        eventually("no pod left", T, || async {
            env.pool_pods("bench", true).await.is_empty().then_some(())
        })
        .await;
        if watch_registration {
            eventually("the pool is watched", T, || async {
                (op.metric("workpool_wake_watched_pools").await == Some(1.0)).then_some(())
            })
            .await;
        }
        // Pods seen so far are old news.
        while pods_seen.try_recv().is_ok() {}
        // A pseudo-random pause, so that submissions do not keep one phase of the poll.
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis((*seed >> 33) % 5000)).await;
        let payload = format!("{{\"task\":\"bench-{i}\"}}");
        let done_before = env.done_lines("bench").len();
        let t0 = Instant::now();
        queue
            .enqueue(
                &mut conn,
                &[workpool_worker::queue::NewTask::new(payload.as_bytes())],
            )
            .await
            .expect("enqueue");
        let (_, t1) = tokio::time::timeout(T, pods_seen.next())
            .await
            .expect("a pod within the test's patience")
            .expect("the pod watch runs");
        out.push(t1.saturating_duration_since(t0));
        eventually("the task ran", T, || async {
            (env.done_lines("bench").len() > done_before).then_some(())
        })
        .await;
    }
    out
}

fn summary(name: &str, mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let rank = |p: f64| d[((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1];
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        d.len(),
        ms(rank(0.5)),
        ms(rank(0.95)),
        ms(*d.last().expect("samples")),
        ms(d.iter().sum::<Duration>() / d.len() as u32),
    )
}

/// The wake-from-zero benchmark (`make bench-wake`): first task -> pod create request,
/// with wake (the default) and with `--wake=false` (the poll alone) as the peer, on the
/// real control plane, the operator binary and a real redis-server. Prints a markdown
/// table for BENCHMARKS.md. Repetitions: `WAKE_BENCH_REPS` (20), `WAKE_BENCH_PEER_REPS` (10).
#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let reps: usize = std::env::var("WAKE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let peer_reps: usize = std::env::var("WAKE_BENCH_PEER_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let env = Env::start().await;
    // Every pod ADDED, with the local time it was received.
    let (tx, mut pods_seen) = futures::channel::mpsc::unbounded();
    let stream = watcher(
        env.pods(),
        watcher::Config::default().labels("workpool.dev/pool=bench"),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                && let Some(n) = p.metadata.name.clone()
                && seen.insert(n.clone())
                && tx.unbounded_send((n, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    env.apply_pool(&env.exec_pool(
        "bench",
        1,
        0.0,
        json!({"autoscaling": {
            "minReplicas": 0, "maxReplicas": 1, "targetBacklogPerReplica": 1,
            // HPA-like defaults for the poll (5 s) and a quick return to zero.
            "pollIntervalSeconds": 5, "scaleToZeroDelaySeconds": 0,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
        }}),
    ))
    .await;
    let mut seed = 42u64;
    let mut op = Operator::start(&env.cluster, "op-bench-wake", &[]);
    let wake = wake_latencies(&env, &op, true, reps, &mut pods_seen, &mut seed).await;
    op.terminate();
    let mut op = Operator::start(&env.cluster, "op-bench-poll", &["--wake=false"]);
    let poll = wake_latencies(&env, &op, false, peer_reps, &mut pods_seen, &mut seed).await;
    op.terminate();
    println!("\n| operator | runs | p50 ms | p95 ms | max ms | mean ms |");
    println!("|---|---|---|---|---|---|");
    println!("{}", summary("wake (default)", wake));
    println!(
        "{}",
        summary("`--wake=false` (poll only, pollIntervalSeconds 5)", poll)
    );
}
