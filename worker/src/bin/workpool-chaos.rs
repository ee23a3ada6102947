//! `workpool-chaos`: the chaos suite as a command. Runs thousands of tasks through several
//! real workers against a real redis-server while injecting faults from a seed, checks
//! the invariants and prints the figures (see `workpool_worker::chaos`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use workpool_worker::chaos::{self, ChaosConfig, Topology};

#[derive(Parser, Debug)]
#[command(
    name = "workpool-chaos",
    about = "Chaos run: tasks through real workers and Redis under injected faults; checks that none is lost or run twice while its worker lives"
)]
struct Args {
    /// Seeds to run, one after the other (each a full run).
    #[arg(long, default_values_t = [1u64], num_args = 1..)]
    seed: Vec<u64>,
    /// Tasks per run.
    #[arg(long, default_value_t = 5000)]
    tasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// --concurrency of each worker.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// --visibility-timeout of each worker (seconds).
    #[arg(long, default_value_t = 3.0)]
    visibility_timeout: f64,
    /// --max-deliveries of each worker.
    #[arg(long, default_value_t = 10)]
    max_deliveries: u32,
    /// Seconds of fault injection.
    #[arg(long, default_value_t = 120.0)]
    chaos_secs: f64,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 1.5)]
    fault_every: f64,
    /// A run that has not finished after this many seconds fails.
    #[arg(long, default_value_t = 600.0)]
    deadline_secs: f64,
    /// The workpool-worker binary [default: next to this one].
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Print each report as JSON too.
    #[arg(long)]
    json: bool,
    /// Where the queue lives: standalone (Redis restarts, freezes, group deletions),
    /// sentinel (failovers) or cluster (slot migrations of the partitions).
    #[arg(long, value_parser = ["standalone", "sentinel", "cluster"], default_value = "standalone")]
    topology: String,
    /// Partitions of the pool with --topology cluster.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

fn secs(s: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("--{name}: {e}"))
}

fn main() -> ExitCode {
    let a = Args::parse();
    let worker_bin = match a.worker_bin.clone().or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.with_file_name("workpool-worker"))
    }) {
        Some(p) if p.exists() => p,
        other => {
            eprintln!(
                "error: workpool-worker binary not found ({other:?}); build it (cargo build --release -p workpool-worker) or pass --worker-bin"
            );
            return ExitCode::FAILURE;
        }
    };
    let durations = (|| {
        Ok::<_, String>((
            secs(a.visibility_timeout, "visibility-timeout")?,
            secs(a.chaos_secs, "chaos-secs")?,
            secs(a.fault_every, "fault-every")?,
            secs(a.deadline_secs, "deadline-secs")?,
        ))
    })();
    let (vis, chaos_for, fault_every, deadline) = match durations {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut broken = false;
    for &seed in &a.seed {
        let cfg = ChaosConfig {
            worker_bin: worker_bin.clone(),
            seed,
            tasks: a.tasks,
            workers: a.workers.max(2),
            concurrency: a.concurrency.max(1),
            visibility_timeout: vis,
            max_deliveries: a.max_deliveries.max(1),
            chaos_for,
            fault_every,
            deadline,
            topology: match a.topology.as_str() {
                "sentinel" => Topology::Sentinel,
                "cluster" => Topology::Cluster {
                    partitions: a.partitions.clamp(1, 64),
                },
                _ => Topology::Standalone,
            },
        };
        // On SIGINT/SIGTERM the run is dropped, which kills its workers and redis-server.
        let r = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return Ok(Err(anyhow::anyhow!("cannot install signal handlers")));
            };
            tokio::select! {
                r = chaos::run(cfg) => Ok(r),
                _ = int.recv() => Err("interrupted"),
                _ = term.recv() => Err("terminated"),
            }
        });
        let r = match r {
            Ok(r) => r,
            Err(why) => {
                eprintln!("error: seed {seed}: {why}; stopping");
                return ExitCode::FAILURE;
            }
        };
        match r {
            Ok(r) => {
                print!("{}", r.render());
                if a.json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                }
                broken |= !r.violations.is_empty();
            }
            Err(e) => {
                eprintln!("error: seed {seed}: {e:#}");
                broken = true;
            }
        }
    }
    if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
