//! `workpool-bench-targets`: queues past one Redis, measured (BENCHMARKS.md "Sentinel,
//! Cluster and partitions"). Real `redis-server`s on loopback, real `workpool-worker`
//! processes:
//!
//! - drain: one pool on one Redis against the same pool with 3 and with 6 partitions on
//!   a 3-primary Redis Cluster, in the same run (rounds alternate the order): tasks/s, and
//!   each Redis node's CPU time (`INFO cpu`) per task;
//! - durable submit: `submit --count N` against `submit --count N --min-replicas 1`
//!   through a Sentinel set (primary + 1 replica): tasks/s;
//! - failover: workers draining a Sentinel set whose primary is SIGKILLed: seconds from
//!   the kill to the first task delivered afterwards (its handler called), and runs
//!   repeated.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use workpool_worker::queue::{NewTask, Pool};
use workpool_worker::target::{Connection, Target, Tls};
use workpool_worker::testing::{
    ClusterOptions, RedisCluster, RedisServer, SentinelOptions, SentinelSet,
};

#[derive(Parser, Debug)]
#[command(
    name = "workpool-bench-targets",
    about = "Drain rate and Redis CPU per task on one Redis vs a 3-node Cluster with 3 and 6 partitions; durable submit; failover"
)]
struct Args {
    /// Tasks per drain round and per submit.
    #[arg(long, default_value_t = 200_000)]
    tasks: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker processes draining.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Only this part: drain, submit or failover.
    #[arg(long)]
    only: Option<String>,
    /// The workpool-worker binary [default: next to this one].
    #[arg(long)]
    worker_bin: Option<PathBuf>,
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_workers(
    bin: &PathBuf,
    url: &str,
    partitions: usize,
    n: usize,
    handler: &[&str],
) -> anyhow::Result<Workers> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Command::new(bin)
                .args(["run", "--redis-url", url, "--stream", "b", "--group", "g"])
                .args([
                    "--consumer",
                    &format!("w{i}"),
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--metrics-addr", "127.0.0.1:0", "--concurrency", "1000"])
                .args(handler)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting workpool-worker")?,
        );
    }
    Ok(Workers(v))
}

/// `used_cpu_sys + used_cpu_user` of a node, seconds.
fn cpu(server: &RedisServer) -> anyhow::Result<f64> {
    let info: String = server.cmd(redis::cmd("INFO").arg("cpu"))?;
    let mut total = 0.0;
    for l in info.lines() {
        if let Some((k, v)) = l.trim().split_once(':')
            && (k == "used_cpu_sys" || k == "used_cpu_user")
        {
            total += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total)
}

async fn enqueue(c: &Connection, pool: &Pool, n: usize) -> anyhow::Result<()> {
    let payload = b"{}".to_vec();
    let parts = pool.partitions();
    let mut futs = Vec::new();
    for p in 0..parts {
        let q = pool.partition(p);
        let mut c = c.clone();
        let count = n / parts + usize::from(p < n % parts);
        let payload = payload.clone();
        futs.push(async move {
            let mut left = count;
            while left > 0 {
                let k = left.min(1000);
                let tasks: Vec<NewTask<'_>> = (0..k).map(|_| NewTask::new(&payload)).collect();
                q.enqueue(&mut c, &tasks).await?;
                left -= k;
            }
            q.ensure_group(&mut c).await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    futures::future::try_join_all(futs).await?;
    Ok(())
}

async fn remaining(c: &Connection, pool: &Pool) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for q in pool.queues() {
        let n: u64 = redis::cmd("XLEN")
            .arg(q.stream())
            .query_async(&mut c.clone())
            .await?;
        total += n;
    }
    Ok(total)
}

struct DrainResult {
    rate: f64,
    /// CPU seconds per million tasks, per node.
    cpu_per_mtask: Vec<f64>,
}

async fn drain_round(
    bin: &PathBuf,
    url: &str,
    nodes: &[&RedisServer],
    pool: &Pool,
    tasks: usize,
    workers: usize,
) -> anyhow::Result<DrainResult> {
    let target = Target::new(url, &Tls::none())?;
    let c = target.connect(Some(Duration::from_secs(30))).await?;
    for q in pool.queues() {
        let _: redis::Value = redis::cmd("DEL")
            .arg(q.stream())
            .query_async(&mut c.clone())
            .await?;
    }
    enqueue(&c, pool, tasks).await?;
    let before: Vec<f64> = nodes
        .iter()
        .map(|n| cpu(n))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    let _w = spawn_workers(bin, url, pool.partitions(), workers, &["--builtin", "noop"])?;
    loop {
        if remaining(&c, pool).await? == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("not drained in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<f64> = nodes
        .iter()
        .map(|n| cpu(n))
        .collect::<anyhow::Result<_>>()?;
    Ok(DrainResult {
        rate: tasks as f64 / secs,
        cpu_per_mtask: before
            .iter()
            .zip(after)
            .map(|(b, a)| (a - b) / tasks as f64 * 1e6)
            .collect(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

async fn bench_drain(a: &Args, bin: &PathBuf) -> anyhow::Result<()> {
    let single = RedisServer::start()?;
    let cluster = RedisCluster::start(ClusterOptions::default())?;
    let primaries = cluster.primaries();
    let cluster_nodes: Vec<&RedisServer> = primaries.iter().map(|&i| &cluster.nodes[i]).collect();
    let configs: Vec<(&str, String, Vec<&RedisServer>, Pool)> = vec![
        (
            "one Redis, 1 partition",
            single.url(),
            vec![&single],
            Pool::new("b", "g"),
        ),
        (
            "3-node Cluster, 3 partitions",
            cluster.url(),
            cluster_nodes.clone(),
            Pool::new("b", "g").with_partitions(3).with_cluster(true),
        ),
        (
            "3-node Cluster, 6 partitions",
            cluster.url(),
            cluster_nodes.clone(),
            Pool::new("b", "g").with_partitions(6).with_cluster(true),
        ),
    ];
    let mut results: HashMap<usize, Vec<DrainResult>> = HashMap::new();
    for round in 0..a.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            let (name, url, nodes, pool) = &configs[i];
            let r = drain_round(bin, url, nodes, pool, a.tasks, a.workers).await?;
            eprintln!(
                "round {}: {name}: {:.0} tasks/s, CPU s per million tasks per node {:?}",
                round + 1,
                r.rate,
                r.cpu_per_mtask
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
            );
            results.entry(i).or_default().push(r);
        }
    }
    let single_rate = median(results[&0].iter().map(|r| r.rate).collect());
    let single_cpu = median(results[&0].iter().map(|r| r.cpu_per_mtask[0]).collect());
    println!(
        "\n| pool | drain, tasks/s (median) | vs one Redis | Redis CPU s per million tasks, each node (median) | busiest node vs one Redis |"
    );
    println!("|---|---:|---:|---|---:|");
    for (i, (name, ..)) in configs.iter().enumerate() {
        let rs = &results[&i];
        let rate = median(rs.iter().map(|r| r.rate).collect());
        let per_node: Vec<f64> = (0..rs[0].cpu_per_mtask.len())
            .map(|n| median(rs.iter().map(|r| r.cpu_per_mtask[n]).collect()))
            .collect();
        let busiest = per_node.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {rate:.0} | {:.2}x | {} | {:.2}x |",
            rate / single_rate,
            per_node
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            busiest / single_cpu
        );
    }
    println!("\nrounds:");
    for (i, (name, ..)) in configs.iter().enumerate() {
        for (k, r) in results[&i].iter().enumerate() {
            println!(
                "- round {}, {name}: {:.0} tasks/s; CPU s per million tasks per node: {}",
                k + 1,
                r.rate,
                r.cpu_per_mtask
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    Ok(())
}

fn submit_secs(bin: &PathBuf, url: &str, tasks: usize, durable: bool) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args([
        "submit",
        "--redis-url",
        url,
        "--stream",
        "s",
        "--payload",
        "{}",
    ])
    .args(["--count", &tasks.to_string()]);
    if durable {
        cmd.args(["--min-replicas", "1"]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("submit: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t0.elapsed().as_secs_f64())
}

async fn bench_submit(a: &Args, bin: &PathBuf) -> anyhow::Result<()> {
    let set = SentinelSet::start(SentinelOptions {
        replicas: 1,
        ..SentinelOptions::default()
    })?;
    let url = set.url();
    let mut plain = Vec::new();
    let mut durable = Vec::new();
    for round in 0..a.rounds {
        let first_durable = round % 2 == 1;
        for d in [first_durable, !first_durable] {
            let _: () =
                set.servers[set.primary().context("primary")?].cmd(redis::cmd("DEL").arg("s"))?;
            let secs = submit_secs(bin, &url, a.tasks, d)?;
            let rate = a.tasks as f64 / secs;
            eprintln!(
                "round {}: submit {}: {rate:.0} tasks/s",
                round + 1,
                if d { "--min-replicas 1" } else { "plain" }
            );
            if d {
                durable.push(rate)
            } else {
                plain.push(rate)
            }
        }
    }
    let (p, d) = (median(plain.clone()), median(durable.clone()));
    println!("\n| submit through Sentinel (primary + 1 replica) | tasks/s (median) | rounds |");
    println!("|---|---:|---|");
    println!(
        "| `submit --count {}` | {p:.0} | {} |",
        a.tasks,
        plain
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| `submit --count {} --min-replicas 1` | {d:.0} ({:.2}x) | {} |",
        a.tasks,
        d / p,
        durable
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn bench_failover(a: &Args, bin: &PathBuf) -> anyhow::Result<()> {
    use axum::http::HeaderMap;
    println!(
        "\n| round | down-after | kill to first task delivered after it, s | tasks re-run | tasks |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for round in 0..a.rounds {
        let mut set = SentinelSet::start(SentinelOptions::default())?;
        let url = set.url();
        // The handler: records when each task (by its producer id) reached it.
        let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let s2 = seen.clone();
        let app = axum::Router::new().route(
            "/t",
            axum::routing::post(move |h: HeaderMap| {
                let s2 = s2.clone();
                async move {
                    let id = h
                        .get("x-workpool-producer-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    s2.lock().map(|mut v| v.push((id, Instant::now()))).ok();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let handler = format!("http://{}/t", listener.local_addr()?);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let target = Target::new(&url, &Tls::none())?;
        let pool = Pool::new("b", "g");
        let q = pool.partition(0);
        let n = 20_000usize;
        {
            let mut c = target.connect(Some(Duration::from_secs(30))).await?;
            q.ensure_group(&mut c).await?;
            let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
            for chunk in ids.chunks(1000) {
                let tasks: Vec<NewTask<'_>> = chunk
                    .iter()
                    .map(|id| NewTask {
                        payload: b"{}",
                        id: Some(id),
                        attempt: None,
                    })
                    .collect();
                q.enqueue_wait(&mut c, &tasks, 1, Duration::from_secs(5))
                    .await?;
            }
        }
        let _w = Workers(
            (0..4)
                .map(|i| {
                    Command::new(bin)
                        .args(["run", "--redis-url", &url, "--stream", "b", "--group", "g"])
                        .args([
                            "--consumer",
                            &format!("w{i}"),
                            "--metrics-addr",
                            "127.0.0.1:0",
                        ])
                        .args([
                            "--concurrency",
                            "16",
                            "--visibility-timeout",
                            "3",
                            "--http",
                            &handler,
                        ])
                        .env("RUST_LOG", "warn")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("worker")
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
        // Kill the primary a third of the way through.
        while seen.lock().map(|v| v.len()).unwrap_or(0) < n / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let old = set.primary().context("primary")?;
        let killed = Instant::now();
        let in_flight_seen = seen.lock().map(|v| v.len()).unwrap_or(0);
        set.servers[old].kill_frozen();
        let _ = in_flight_seen;
        // Tasks that reached a handler before the kill were delivered before it; the first
        // one after the kill (less the ones delivered just before it) was delivered by the
        // new primary.
        let first_after = loop {
            let found = seen.lock().ok().and_then(|v| {
                v.iter()
                    .find(|(_, t)| *t > killed + Duration::from_millis(50))
                    .map(|(_, t)| *t)
            });
            if let Some(t) = found {
                break t;
            }
            if killed.elapsed() > Duration::from_secs(120) {
                bail!("no task delivered in 120 s after the kill");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let gap = first_after.duration_since(killed).as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let c = target.connect(Some(Duration::from_secs(5))).await;
            if let Ok(c) = c
                && let Ok(st) = pool.stats(&c).await
                && st.stream_length == 0
                && st.pending == 0
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("not drained after the failover");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut runs: HashMap<String, usize> = HashMap::new();
        for (id, _) in seen.lock().map(|v| v.clone()).unwrap_or_default() {
            *runs.entry(id).or_default() += 1;
        }
        let rerun: usize = runs.values().map(|c| c.saturating_sub(1)).sum();
        let missing = (0..n)
            .filter(|i| !runs.contains_key(&format!("t{i}")))
            .count();
        if missing > 0 {
            bail!("{missing} confirmed tasks never ran");
        }
        println!("| {} | 1 s | {gap:.2} | {rerun} | {n} |", round + 1);
        server.abort();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let bin = match a.worker_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("workpool-worker"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p workpool-worker",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let only = a.only.as_deref();
        println!(
            "workpool-bench-targets: {} tasks, {} rounds, {} workers; redis-server {}",
            a.tasks,
            a.rounds,
            a.workers,
            Command::new(workpool_worker::testing::redis_server_binary())
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        );
        if only.is_none_or(|o| o == "drain") {
            bench_drain(&a, &bin).await?;
        }
        if only.is_none_or(|o| o == "submit") {
            bench_submit(&a, &bin).await?;
        }
        if only.is_none_or(|o| o == "failover") {
            bench_failover(&a, &bin).await?;
        }
        Ok(())
    })
}
