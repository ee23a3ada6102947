//! The chaos suite (feature `test-support`): thousands of tasks through several real
//! `workpool-worker` processes against a real `redis-server` (AOF, fsync always), while
//! faults are injected at random from a seed: SIGKILL of workers and of handler processes,
//! SIGSTOP/SIGCONT and restarts of Redis, `XGROUP DESTROY`, a dead-letter key that refuses
//! writes, slow and failing handlers, tasks longer than the visibility timeout.
//!
//! Every handler run appends a line to one log (`S` at start, `E` at success, `F` at a
//! designed failure) and the injector appends its faults to the same log, so the order of
//! runs and faults is known. At the end the invariants are checked:
//!
//! - every task is either completed (its entry is gone and it is not a dead letter) or in
//!   the dead-letter stream exactly once with a reason, as its design says;
//! - no dead-lettered task ever completed a run;
//! - no task ran twice while its worker lived: every run after the first follows a failed
//!   run (designed failure or killed handler), the death of the worker of the previous run,
//!   or an `XGROUP DESTROY`;
//! - the extra runs caused by a worker kill are at most the runs in flight on that worker.
//!
//! Past one Redis ([`Topology`]): on a Sentinel set the Redis faults are failovers (SIGKILL
//! of the primary, a replica promoted, the old primary back as a replica), and a rerun
//! is also explained by a failover that may have lost its delivery or acknowledgement
//! (bounded per failover by the tasks held then); on a Redis Cluster with partitions the
//! Redis fault is the migration of a partition's slot to another primary, which explains
//! nothing: it must lose and repeat nothing.
//!
//! Used by the bounded test `tests/chaos.rs` and the `workpool-chaos` command.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::queue::{NewTask, Pool as Keys, Queue};
use crate::target::{Connection, Target, Tls};
use crate::testing::{
    ClusterOptions, Persistence, RedisCluster, RedisServer, SentinelOptions, SentinelSet,
};

/// Marks the handler processes of a chaos run (their `$0`), so only those are killed.
const HANDLER_MARK: &str = "workpool-chaos-handler";

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `workpool-worker` binary.
    pub worker_bin: PathBuf,
    /// Seed of every random choice (task mix and faults).
    pub seed: u64,
    /// Tasks enqueued at the start.
    pub tasks: usize,
    /// Worker processes.
    pub workers: usize,
    /// `--concurrency` of each worker.
    pub concurrency: usize,
    /// `--visibility-timeout` of each worker.
    pub visibility_timeout: Duration,
    /// `--max-deliveries` of each worker.
    pub max_deliveries: u32,
    /// How long faults are injected (from the start).
    pub chaos_for: Duration,
    /// Mean pause between two faults.
    pub fault_every: Duration,
    /// The whole run must end within this, or it fails.
    pub deadline: Duration,
    /// Where the queue lives.
    pub topology: Topology,
}

/// Where the queue of a chaos run lives, and so which Redis faults are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// One `redis-server` (AOF, fsync always): SIGSTOP/SIGCONT, restarts, `XGROUP
    /// DESTROY`, a dead-letter key that refuses writes.
    #[default]
    Standalone,
    /// A primary, two replicas and three sentinels: failovers.
    Sentinel,
    /// A three-primary Redis Cluster and a pool of this many partitions: slot migrations.
    Cluster {
        /// Partitions of the pool.
        partitions: u32,
    },
}

impl ChaosConfig {
    /// A configuration for a bounded test run.
    pub fn small(worker_bin: PathBuf, seed: u64) -> ChaosConfig {
        ChaosConfig {
            worker_bin,
            seed,
            tasks: 600,
            workers: 4,
            concurrency: 4,
            visibility_timeout: Duration::from_secs(2),
            max_deliveries: 10,
            chaos_for: Duration::from_secs(25),
            fault_every: Duration::from_millis(1200),
            // About 45 s on a quiet machine; the margin is for a loaded one (a deadline
            // is no performance assertion).
            deadline: Duration::from_secs(240),
            topology: Topology::Standalone,
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChaosReport {
    /// Seed.
    pub seed: u64,
    /// Tasks enqueued.
    pub tasks: usize,
    /// Tasks completed.
    pub completed: usize,
    /// Tasks in the dead-letter stream (by design: permanent or always failing).
    pub dead_lettered: usize,
    /// Handler runs.
    pub runs: usize,
    /// Runs after a designed failure or a killed handler (retries).
    pub retries: usize,
    /// SIGKILLs of workers.
    pub worker_kills: usize,
    /// SIGKILLs of handler processes.
    pub handler_kills: usize,
    /// SIGSTOP/SIGCONT of Redis.
    pub redis_pauses: usize,
    /// Restarts of Redis (SIGKILL, start again from the AOF).
    pub redis_restarts: usize,
    /// `XGROUP DESTROY`.
    pub group_destroys: usize,
    /// Periods when the dead-letter key refused writes.
    pub dead_letter_blocks: usize,
    /// Sentinel failovers (SIGKILL of the primary, a replica promoted).
    pub failovers: usize,
    /// Slot migrations of a partition to another cluster primary.
    pub slot_migrations: usize,
    /// Extra runs explained by a failover (a delivery or acknowledgement that died with
    /// the primary before a replica had it).
    pub duplicates_from_failovers: usize,
    /// Extra runs caused by worker kills.
    pub duplicates_from_kills: usize,
    /// Most extra runs caused by one worker kill.
    pub max_duplicates_per_kill: usize,
    /// Runs still running on the killed worker at that kill (for the kill above).
    pub in_flight_at_that_kill: usize,
    /// Extra runs caused by `XGROUP DESTROY` (the recreated group delivers everything
    /// again, including tasks running elsewhere).
    pub duplicates_from_destroys: usize,
    /// Seconds from a worker kill until the last of its in-flight tasks started again
    /// elsewhere: median and maximum.
    pub kill_recovery_median_s: f64,
    /// See `kill_recovery_median_s`.
    pub kill_recovery_max_s: f64,
    /// Seconds from Redis answering again (SIGCONT or restart) until a task started (it
    /// needs Redis: a delivery, or a retry recorded):
    /// median and maximum.
    pub redis_recovery_median_s: f64,
    /// See `redis_recovery_median_s`.
    pub redis_recovery_max_s: f64,
    /// Seconds of the whole run.
    pub elapsed_s: f64,
    /// Broken invariants (empty when all hold).
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "seed {}: {} tasks, {} completed, {} dead-lettered (by design), {} handler runs ({} retries)\n\
             faults: {} worker SIGKILLs, {} handler SIGKILLs, {} Redis SIGSTOP/SIGCONT, {} Redis restarts, {} XGROUP DESTROY, {} dead-letter write blocks, {} failovers, {} slot migrations\n\
             duplicates: {} from worker kills (most from one kill: {}, with {} running on it), {} from XGROUP DESTROY, {} from failovers, 0 otherwise\n\
             recovery after a worker kill (its tasks running again elsewhere): median {:.2}s, max {:.2}s\n\
             recovery after Redis answers again (a task starts): median {:.2}s, max {:.2}s\n\
             elapsed {:.1}s; invariants: {}\n",
            self.seed,
            self.tasks,
            self.completed,
            self.dead_lettered,
            self.runs,
            self.retries,
            self.worker_kills,
            self.handler_kills,
            self.redis_pauses,
            self.redis_restarts,
            self.group_destroys,
            self.dead_letter_blocks,
            self.failovers,
            self.slot_migrations,
            self.duplicates_from_kills,
            self.max_duplicates_per_kill,
            self.in_flight_at_that_kill,
            self.duplicates_from_destroys,
            self.duplicates_from_failovers,
            self.kill_recovery_median_s,
            self.kill_recovery_max_s,
            self.redis_recovery_median_s,
            self.redis_recovery_max_s,
            self.elapsed_s,
            if self.violations.is_empty() {
                "all hold".to_string()
            } else {
                format!("{} BROKEN", self.violations.len())
            }
        );
        for v in self.violations.iter().take(30) {
            s += &format!("  violation: {v}\n");
        }
        s
    }
}

/// How a task is designed to behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Sleeps, then succeeds.
    Ok,
    /// Fails its first `k` deliveries, then succeeds.
    Flaky,
    /// Always fails (retryable): dead-lettered after maxDeliveries.
    Fail,
    /// Fails permanently (exit 100): dead-lettered at once.
    Perm,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Flaky => "flaky",
            Kind::Fail => "fail",
            Kind::Perm => "perm",
        }
    }

    fn dies(self) -> bool {
        matches!(self, Kind::Fail | Kind::Perm)
    }
}

struct Task {
    kind: Kind,
    secs: f64,
    fail_first: u32,
}

fn design(rng: &mut StdRng, n: usize, vis: Duration) -> Vec<Task> {
    (0..n)
        .map(|_| {
            let r: f64 = rng.random();
            let short = rng.random_range(0.01..0.15);
            if r < 0.70 {
                Task {
                    kind: Kind::Ok,
                    secs: short,
                    fail_first: 0,
                }
            } else if r < 0.78 {
                // Slow.
                Task {
                    kind: Kind::Ok,
                    secs: rng.random_range(0.3..1.5),
                    fail_first: 0,
                }
            } else if r < 0.83 {
                // Longer than the visibility timeout: must still run once.
                Task {
                    kind: Kind::Ok,
                    secs: vis.as_secs_f64() * rng.random_range(1.5..2.5),
                    fail_first: 0,
                }
            } else if r < 0.91 {
                Task {
                    kind: Kind::Flaky,
                    secs: short,
                    fail_first: rng.random_range(1..=2),
                }
            } else if r < 0.95 {
                Task {
                    kind: Kind::Fail,
                    secs: 0.0,
                    fail_first: 0,
                }
            } else {
                Task {
                    kind: Kind::Perm,
                    secs: 0.0,
                    fail_first: 0,
                }
            }
        })
        .collect()
}

/// Seconds since boot, the clock of the run log (handlers read `/proc/uptime` too).
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn log_event(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line} {:.2}\n", uptime()).as_bytes());
    }
}

fn handler_script(log: &Path) -> String {
    let log = log.display();
    format!(
        r#"read -r kind secs k; read -r up _ < /proc/uptime
echo "S $WORKPOOL_PRODUCER_ID $WORKPOOL_CONSUMER $WORKPOOL_DELIVERY $$ $PPID $up" >> {log}
case "$kind" in
  perm) read -r up _ < /proc/uptime; echo "F $WORKPOOL_PRODUCER_ID $$ $up" >> {log}; echo "cannot process $WORKPOOL_PRODUCER_ID" >&2; exit 100;;
  fail) read -r up _ < /proc/uptime; echo "F $WORKPOOL_PRODUCER_ID $$ $up" >> {log}; echo "always fails" >&2; exit 1;;
  flaky) if [ "$WORKPOOL_DELIVERY" -le "$k" ]; then read -r up _ < /proc/uptime; echo "F $WORKPOOL_PRODUCER_ID $$ $up" >> {log}; echo flaky >&2; exit 1; fi;;
  ok) ;;
  *) read -r up _ < /proc/uptime; echo "F $WORKPOOL_PRODUCER_ID $$ $up" >> {log}; echo "no payload (worker killed while starting me?)" >&2; exit 1;;
esac
sleep "$secs"
read -r up _ < /proc/uptime
echo "E $WORKPOOL_PRODUCER_ID $$ $up" >> {log}"#
    )
}

struct WorkerProc {
    consumer: String,
    child: Child,
}

struct Pool {
    cfg: ChaosConfig,
    url: String,
    partitions: u32,
    dir: PathBuf,
    script: String,
    slots: Vec<Option<WorkerProc>>,
    generation: usize,
}

impl Pool {
    fn spawn(&mut self, slot: usize, consumer: String) -> anyhow::Result<()> {
        self.generation += 1;
        let err =
            std::fs::File::create(self.dir.join(format!("{consumer}.{}.log", self.generation)))?;
        let child = Command::new(&self.cfg.worker_bin)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--redis-url")
            .arg(&self.url)
            .arg("--stream")
            .arg("chaos")
            .arg("--group")
            .arg("pool")
            .arg("--partitions")
            .arg(self.partitions.to_string())
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--concurrency")
            .arg(self.cfg.concurrency.to_string())
            .arg("--visibility-timeout")
            .arg(format!("{}", self.cfg.visibility_timeout.as_secs_f64()))
            .arg("--max-deliveries")
            .arg(self.cfg.max_deliveries.to_string())
            .arg("--retry-backoff")
            .arg("0.05")
            .arg("--retry-backoff-max")
            .arg("0.5")
            .arg("--shutdown-grace")
            .arg("5")
            .arg("--exec")
            .arg("sh")
            .arg("-c")
            .arg(&self.script)
            .arg(HANDLER_MARK)
            .env("WORKPOOL_CONSUMER", &consumer)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting workpool-worker")?;
        self.slots[slot] = Some(WorkerProc { consumer, child });
        Ok(())
    }

    /// SIGKILLs the worker of `slot`: its consumer name and process id.
    fn kill(&mut self, slot: usize) -> Option<(String, u32)> {
        let mut w = self.slots[slot].take()?;
        let pid = w.child.id();
        let _ = w.child.kill();
        let _ = w.child.wait();
        Some((w.consumer, pid))
    }

    fn stop_all(&mut self) {
        for w in self.slots.iter_mut().flatten() {
            if let Ok(pid) = i32::try_from(w.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for w in self.slots.iter_mut().flatten() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = w.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for slot in 0..self.slots.len() {
            self.kill(slot);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for slot in 0..self.slots.len() {
            self.kill(slot);
        }
    }
}

/// Handler processes of this run still alive (pids from `S` lines, checked by their mark).
fn live_handlers(log: &str) -> Vec<i32> {
    let mut open: HashSet<i32> = HashSet::new();
    for l in log.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first() {
            Some(&"S") if f.len() >= 7 => {
                if let Ok(p) = f[4].parse() {
                    open.insert(p);
                }
            }
            Some(&"E") | Some(&"F") if f.len() >= 3 => {
                if let Ok(p) = f[2].parse::<i32>() {
                    open.remove(&p);
                }
            }
            _ => {}
        }
    }
    let mut v: Vec<i32> = open
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    c.windows(HANDLER_MARK.len())
                        .any(|w| w == HANDLER_MARK.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect();
    v.sort_unstable();
    v
}

async fn redis_conn(url: &str) -> anyhow::Result<Connection> {
    let target = Target::new(url, &Tls::none())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match target.connect(Some(Duration::from_secs(3))).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The Redis of a run.
enum Backend {
    Standalone(RedisServer),
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

impl Backend {
    fn start(t: Topology) -> anyhow::Result<Backend> {
        Ok(match t {
            Topology::Standalone => {
                Backend::Standalone(RedisServer::start_with(Persistence::AppendOnlyAlways)?)
            }
            Topology::Sentinel => {
                Backend::Sentinel(SentinelSet::start(SentinelOptions::default())?)
            }
            Topology::Cluster { .. } => {
                Backend::Cluster(RedisCluster::start(ClusterOptions::default())?)
            }
        })
    }

    fn url(&self) -> String {
        match self {
            Backend::Standalone(r) => r.url(),
            Backend::Sentinel(s) => s.url(),
            Backend::Cluster(c) => c.url(),
        }
    }
}

/// Runs a command against Redis, retrying while it restarts.
async fn redis_do(url: &str, cmd: &redis::Cmd) -> anyhow::Result<redis::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = async {
            let mut c = redis_conn(url).await?;
            let v: redis::Value = cmd.query_async(&mut c).await?;
            Ok::<_, anyhow::Error>(v)
        }
        .await;
        match r {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

const BLOCK_DLQ: &str = "if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('TYPE', KEYS[1]).ok == 'stream' then redis.call('RENAME', KEYS[1], KEYS[2]) end redis.call('SET', KEYS[1], 'blocked by the chaos suite') return 1";
const UNBLOCK_DLQ: &str = "if redis.call('TYPE', KEYS[1]).ok == 'string' then redis.call('DEL', KEYS[1]) end if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end return 1";

fn eval(script: &str) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script)
        .arg(2)
        .arg("chaos:dead")
        .arg("chaos:dead:held");
    c
}

/// Runs the suite and checks the invariants; `Err` only when the run itself could not be
/// carried out (a broken invariant is reported in [`ChaosReport::violations`]).
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let dir = tempfile::Builder::new()
        .prefix("workpool-chaos")
        .tempdir()?;
    let log = dir.path().join("runs.log");
    std::fs::write(&log, b"")?;
    let mut backend = Backend::start(cfg.topology)?;
    let url = backend.url();
    let partitions = match cfg.topology {
        Topology::Cluster { partitions } => partitions.max(1),
        _ => 1,
    };
    let keys = Keys::new("chaos", "pool")
        .with_partitions(partitions)
        .with_cluster(matches!(cfg.topology, Topology::Cluster { .. }));
    keys.validate()?;
    // The standalone run names its dead-letter stream (the dead-letter block fault needs
    // a known name); the others use the default names of their partitions.
    let keys = if cfg.topology == Topology::Standalone {
        keys.with_dead_letter_stream("chaos:dead")
    } else {
        keys
    };
    let q: Queue = keys.partition(0);
    let tasks = design(&mut rng, cfg.tasks, cfg.visibility_timeout);
    {
        let c = redis_conn(&url).await?;
        for q in keys.queues() {
            q.ensure_group(&mut c.clone()).await?;
        }
        let payloads: Vec<String> = tasks
            .iter()
            .map(|t| format!("{} {:.3} {}", t.kind.word(), t.secs, t.fail_first))
            .collect();
        let ids: Vec<String> = (0..tasks.len()).map(|i| format!("t{i}")).collect();
        let n = keys.partitions();
        for p in 0..n {
            let idx: Vec<usize> = (p..tasks.len()).step_by(n).collect();
            let q = keys.partition(p);
            for chunk in idx.chunks(1000) {
                let batch: Vec<NewTask<'_>> = chunk
                    .iter()
                    .map(|&i| NewTask {
                        payload: payloads[i].as_bytes(),
                        id: Some(&ids[i]),
                        attempt: None,
                    })
                    .collect();
                if matches!(cfg.topology, Topology::Sentinel) {
                    // Durable: a failover must not lose a task before it starts.
                    let (_, acked) = q
                        .enqueue_wait(&mut c.clone(), &batch, 1, Duration::from_secs(10))
                        .await?;
                    if acked < 1 {
                        bail!("no replica confirmed the tasks");
                    }
                } else {
                    q.enqueue(&mut c.clone(), &batch).await?;
                }
            }
        }
    }
    let mut pool = Pool {
        script: handler_script(&log),
        cfg: cfg.clone(),
        url: url.clone(),
        partitions,
        dir: dir.path().to_path_buf(),
        slots: (0..cfg.workers).map(|_| None).collect(),
        generation: 0,
    };
    for slot in 0..cfg.workers {
        pool.spawn(slot, format!("w{slot}"))?;
    }
    let mut report = ChaosReport {
        seed: cfg.seed,
        tasks: cfg.tasks,
        ..Default::default()
    };
    let mut restarts: Vec<(usize, f64)> = Vec::new(); // slot, when to restart (uptime)
    let chaos_end = t0 + cfg.chaos_for;
    let deadline = t0 + cfg.deadline;
    let mut next_fault = Instant::now() + jitter(&mut rng, cfg.fault_every);
    loop {
        if Instant::now() > deadline {
            pool.stop_all();
            bail!(
                "the chaos run did not finish within {:?}; logs in {}",
                cfg.deadline,
                dir.keep().display()
            );
        }
        // Restart killed workers after a short while, like a kubelet.
        let now_up = uptime();
        let due: Vec<usize> = restarts
            .iter()
            .filter(|(_, at)| *at <= now_up)
            .map(|(s, _)| *s)
            .collect();
        restarts.retain(|(_, at)| *at > now_up);
        for slot in due {
            // Half the time the same name (a container restart in the same pod), else a
            // new one (a new pod).
            let name = if rng.random_bool(0.5) {
                format!("w{slot}")
            } else {
                format!("w{slot}-{}", pool.generation)
            };
            pool.spawn(slot, name)?;
        }
        if Instant::now() < chaos_end && Instant::now() >= next_fault {
            next_fault = Instant::now() + jitter(&mut rng, cfg.fault_every);
            let pick: f64 = rng.random();
            if pick < 0.30 {
                let live: Vec<usize> = (0..pool.slots.len())
                    .filter(|&s| pool.slots[s].is_some())
                    .collect();
                // Keep at least one worker alive.
                if live.len() > 1 {
                    let slot = live[rng.random_range(0..live.len())];
                    if let Some((consumer, pid)) = pool.kill(slot) {
                        log_event(&log, &format!("K {consumer} {pid}"));
                        report.worker_kills += 1;
                        restarts.push((slot, uptime() + rng.random_range(0.2..1.5)));
                    }
                }
            } else if pick < 0.55 {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let live = live_handlers(&text);
                if !live.is_empty() {
                    let pid = live[rng.random_range(0..live.len())];
                    log_event(&log, &format!("H {pid}"));
                    if nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        report.handler_kills += 1;
                    }
                }
            } else if !matches!(backend, Backend::Standalone(_)) {
                redis_fault(&mut backend, &keys, &mut rng, &log, &mut report).await?;
            } else if pick < 0.70 {
                let Backend::Standalone(redis) = &mut backend else {
                    unreachable!("checked above")
                };
                let secs = rng.random_range(0.3..(cfg.visibility_timeout.as_secs_f64() * 1.5));
                log_event(&log, "P");
                redis.pause();
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                redis.resume();
                log_event(&log, "U");
                report.redis_pauses += 1;
            } else if pick < 0.80 {
                let Backend::Standalone(redis) = &mut backend else {
                    unreachable!("checked above")
                };
                log_event(&log, "R");
                redis.stop();
                tokio::time::sleep(Duration::from_secs_f64(rng.random_range(0.1..1.0))).await;
                redis.restart()?;
                log_event(&log, "U");
                report.redis_restarts += 1;
            } else if pick < 0.90 {
                // Logged before it happens, as the other faults: a worker recreates the
                // group and starts a task again within milliseconds, and the checker
                // attributes a second run to a deletion logged before it. (A DESTROY that
                // finds no group leaves a harmless extra line.)
                log_event(&log, "D");
                let v = redis_do(
                    &url,
                    redis::cmd("XGROUP").arg("DESTROY").arg("chaos").arg("pool"),
                )
                .await?;
                if v == redis::Value::Int(1) {
                    report.group_destroys += 1;
                }
            } else {
                redis_do(&url, &eval(BLOCK_DLQ)).await?;
                log_event(&log, "B");
                tokio::time::sleep(Duration::from_secs_f64(rng.random_range(0.5..3.0))).await;
                redis_do(&url, &eval(UNBLOCK_DLQ)).await?;
                log_event(&log, "b");
                report.dead_letter_blocks += 1;
            }
        }
        if Instant::now() >= chaos_end && restarts.is_empty() {
            let done = async {
                let c = redis_conn(&url).await?;
                let st = keys.stats(&c).await?;
                Ok::<_, anyhow::Error>(st.stream_length == 0 && st.pending == 0 && st.group_exists)
            }
            .await
            .unwrap_or(false);
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.stop_all();
    // Handlers orphaned by killed workers may still be running: let them finish.
    let orphan_deadline = Instant::now() + cfg.visibility_timeout * 3;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let live = live_handlers(&text);
        if live.is_empty() || Instant::now() > orphan_deadline {
            for pid in live {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = {
        let c = redis_conn(&url).await?;
        let mut all = Vec::new();
        for q in keys.queues() {
            let v: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(q.dead_letter_stream())
                .arg("-")
                .arg("+")
                .query_async(&mut c.clone())
                .await?;
            all.extend(v.into_iter().map(|(_, f)| f));
        }
        all
    };
    let _ = &q;
    let text = std::fs::read_to_string(&log)?;
    analyse(&tasks, &text, &dead, cfg.visibility_timeout, &mut report);
    report.elapsed_s = t0.elapsed().as_secs_f64();
    if !report.violations.is_empty() {
        let kept = dir.keep();
        report.violations.push(format!(
            "run log and worker logs kept in {}",
            kept.display()
        ));
    }
    Ok(report)
}

/// A Redis fault of a Sentinel set (a failover) or a cluster (a slot migration).
async fn redis_fault(
    backend: &mut Backend,
    keys: &Keys,
    rng: &mut StdRng,
    log: &Path,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    match backend {
        Backend::Sentinel(set) => {
            // A failover takes seconds: at most one per few faults.
            if report.failovers >= 3 || rng.random_bool(0.5) {
                return Ok(());
            }
            let old = set.primary().context("no primary")?;
            log_event(log, "O");
            set.servers[old].stop();
            let new = tokio::task::block_in_place(|| {
                set.wait_for_failover(old, Duration::from_secs(60))
            })?;
            report.failovers += 1;
            log_event(log, "U");
            // The old primary comes back empty; the sentinels make it a replica.
            tokio::task::block_in_place(|| set.servers[old].restart())?;
            let _ = new;
        }
        Backend::Cluster(cluster) => {
            let p = rng.random_range(0..keys.partitions());
            let slot = crate::queue::key_slot(keys.partition(p).stream().as_bytes());
            let from = cluster.node_of_slot(slot).context("no owner")?;
            let others: Vec<usize> = cluster
                .primaries()
                .into_iter()
                .filter(|&n| n != from)
                .collect();
            if others.is_empty() {
                return Ok(());
            }
            let to = others[rng.random_range(0..others.len())];
            let hold = Duration::from_millis(rng.random_range(100..1000));
            log_event(log, &format!("M {p}"));
            tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, hold))?;
            report.slot_migrations += 1;
        }
        Backend::Standalone(_) => {}
    }
    Ok(())
}

fn jitter(rng: &mut StdRng, mean: Duration) -> Duration {
    mean.mul_f64(rng.random_range(0.3..1.7))
}

#[derive(Debug, Clone)]
struct Run {
    consumer: String,
    pid: i32,
    /// The worker process that ran it.
    worker: i32,
    start: f64,
    pos: usize,
    /// (success, position, time)
    ended: Option<(bool, usize, f64)>,
    /// Its handler process was SIGKILLed by the injector.
    handler_killed: bool,
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() - 1])
}

fn analyse(
    tasks: &[Task],
    text: &str,
    dead: &[HashMap<String, String>],
    visibility_timeout: Duration,
    report: &mut ChaosReport,
) {
    let mut runs: HashMap<usize, Vec<Run>> = HashMap::new();
    let mut by_pid: HashMap<i32, (usize, usize)> = HashMap::new();
    // (position, worker pid, time) of worker kills; (position, time) of group deletions.
    let mut kills: Vec<(usize, i32, f64)> = Vec::new();
    let mut kill_names: Vec<String> = Vec::new();
    let mut destroys: Vec<(usize, f64)> = Vec::new();
    // (position, time) of Sentinel failovers.
    let mut failovers: Vec<(usize, f64)> = Vec::new();
    let mut redis_back: Vec<f64> = Vec::new();
    let mut starts: Vec<f64> = Vec::new();
    for (pos, l) in text.lines().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let task = |s: &str| s.strip_prefix('t').and_then(|n| n.parse::<usize>().ok());
        match f.as_slice() {
            ["S", t, consumer, _delivery, pid, worker, up] => {
                let (Some(t), Ok(pid), Ok(worker), Ok(up)) =
                    (task(t), pid.parse(), worker.parse(), up.parse())
                else {
                    continue;
                };
                starts.push(up);
                let v = runs.entry(t).or_default();
                by_pid.insert(pid, (t, v.len()));
                v.push(Run {
                    consumer: consumer.to_string(),
                    pid,
                    worker,
                    start: up,
                    pos,
                    ended: None,
                    handler_killed: false,
                });
            }
            [e @ ("E" | "F"), t, pid, up] => {
                let (Some(tk), Ok(pid), Ok(up)) = (task(t), pid.parse::<i32>(), up.parse::<f64>())
                else {
                    continue;
                };
                // Process ids are reused (pid_max is often 32768): the run is the latest
                // one of this task with this pid.
                if let Some(r) = runs
                    .get_mut(&tk)
                    .and_then(|v| v.iter_mut().rev().find(|r| r.pid == pid))
                {
                    r.ended = Some((*e == "E", pos, up));
                }
            }
            ["K", consumer, pid, up] => {
                if let (Ok(pid), Ok(up)) = (pid.parse::<i32>(), up.parse()) {
                    kills.push((pos, pid, up));
                    kill_names.push(consumer.to_string());
                }
            }
            ["H", pid, up] => {
                let (Ok(pid), Ok(up)) = (pid.parse::<i32>(), up.parse::<f64>()) else {
                    continue;
                };
                // The process killed is the latest run started with that pid.
                if let Some(&(t, i)) = by_pid.get(&pid)
                    && let Some(r) = runs.get_mut(&t).and_then(|v| v.get_mut(i))
                {
                    r.handler_killed = true;
                    if r.ended.is_none() {
                        r.ended = Some((false, pos, up));
                    }
                }
            }
            ["D", up] => {
                if let Ok(up) = up.parse() {
                    destroys.push((pos, up));
                }
            }
            ["O", up] => {
                if let Ok(up) = up.parse() {
                    failovers.push((pos, up));
                }
            }
            ["U", up] => {
                if let Ok(up) = up.parse() {
                    redis_back.push(up);
                }
            }
            _ => {}
        }
    }
    starts.sort_by(|a, b| a.total_cmp(b));
    let mut dead_by_task: HashMap<usize, Vec<&HashMap<String, String>>> = HashMap::new();
    for d in dead {
        match d
            .get("id")
            .and_then(|s| s.strip_prefix('t'))
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(t) => dead_by_task.entry(t).or_default().push(d),
            None => report
                .violations
                .push(format!("a dead letter without a task id: {d:?}")),
        }
    }
    // Extra runs per kill (index into `kills`) and per-kill in-flight runs.
    let mut per_kill: HashMap<usize, usize> = HashMap::new();
    let mut per_failover: HashMap<usize, usize> = HashMap::new();
    let mut recovery: HashMap<usize, f64> = HashMap::new();
    for (t, design) in tasks.iter().enumerate() {
        let rs = runs.get(&t).map(|v| v.as_slice()).unwrap_or(&[]);
        report.runs += rs.len();
        let dls = dead_by_task.get(&t).map(|v| v.as_slice()).unwrap_or(&[]);
        let succeeded = rs.iter().any(|r| matches!(r.ended, Some((true, _, _))));
        if design.kind.dies() {
            if dls.len() != 1 {
                report.violations.push(format!(
                    "t{t} ({:?}) is in the dead-letter stream {} times",
                    design.kind,
                    dls.len()
                ));
            } else {
                report.dead_lettered += 1;
                let reason = dls[0].get("error").cloned().unwrap_or_default();
                let fits = match design.kind {
                    Kind::Perm => reason.starts_with("permanent failure"),
                    _ => reason.contains("failed") || reason.contains("without completing"),
                };
                if !fits {
                    report.violations.push(format!(
                        "t{t} ({:?}) dead-lettered with reason {reason:?}",
                        design.kind
                    ));
                }
            }
            if succeeded {
                report
                    .violations
                    .push(format!("t{t} completed a run but is designed to fail"));
            }
        } else {
            if !dls.is_empty() {
                report.violations.push(format!(
                    "t{t} should complete but is dead-lettered: {:?}",
                    dls[0].get("error")
                ));
            } else if !succeeded {
                report
                    .violations
                    .push(format!("t{t} never completed a run ({} runs)", rs.len()));
            } else {
                report.completed += 1;
            }
        }
        // Every run after the first must be explained by the previous one.
        for k in 1..rs.len() {
            let prev = &rs[k - 1];
            let cur = &rs[k];
            let failed =
                matches!(prev.ended, Some((false, p, _)) if p < cur.pos) || prev.handler_killed;
            if failed {
                report.retries += 1;
                continue;
            }
            // The worker process of the previous run was killed before this run started.
            // (Its handler may have logged its start just after the kill.)
            // A handler whose worker died while starting it sees PPID 1: match the
            // kill by consumer name, just before it.
            let killed = kills.iter().enumerate().find(|(k, (p, w, at))| {
                *p < cur.pos
                    && (*w == prev.worker
                        || (prev.worker == 1
                            && kill_names[*k] == prev.consumer
                            && (prev.start - at).abs() < 1.0))
            });
            if let Some((ki, (_, _, at))) = killed {
                report.duplicates_from_kills += 1;
                *per_kill.entry(ki).or_insert(0) += 1;
                let gap = (cur.start - at).max(0.0);
                let e = recovery.entry(ki).or_insert(0.0);
                *e = e.max(gap);
                continue;
            }
            // A failover after the previous run was delivered: its delivery or its
            // acknowledgement may have died with the primary before a replica had it.
            if let Some((fi, _)) = failovers
                .iter()
                .enumerate()
                .find(|(_, (f, at))| *f < cur.pos && prev.start <= *at + 1.0)
            {
                report.duplicates_from_failovers += 1;
                *per_failover.entry(fi).or_insert(0) += 1;
                continue;
            }
            // A group deletion after the previous run was delivered. (A run delivered by
            // the old group just before the deletion may log its start just after it.)
            if destroys
                .iter()
                .any(|&(d, at)| d < cur.pos && (d > prev.pos || at >= prev.start - 1.0))
            {
                report.duplicates_from_destroys += 1;
                continue;
            }
            report.violations.push(format!(
                "t{t} ran again on {} (line {}) while its previous run on {} (line {}) was neither failed nor lost to a kill or a group deletion",
                cur.consumer,
                cur.pos + 1,
                prev.consumer,
                prev.pos + 1
            ));
        }
    }
    for (ki, n) in &per_kill {
        let (kpos, worker, at) = &kills[*ki];
        // Runs of the killed process still running at the kill; the check also allows
        // runs that succeeded less than a visibility timeout before it: their
        // acknowledgement may not have been written yet (a starved worker flushes late),
        // so the task was still held. (An acknowledgement later than that would have let
        // the task be reclaimed while its worker lived: the check above catches that.)
        let window = visibility_timeout.as_secs_f64();
        let of_worker = || runs.values().flatten().filter(|r| r.worker == *worker);
        let running = of_worker()
            .filter(|r| match r.ended {
                None => true,
                Some((_, p, _)) => p > *kpos,
            })
            .count();
        let held = running
            + of_worker()
                .filter(|r| matches!(r.ended, Some((true, p, t)) if p < *kpos && *at - t < window))
                .count();
        if *n > held {
            report.violations.push(format!(
                "the kill of worker process {worker} caused {n} extra runs but only {held} tasks were held ({running} running)"
            ));
        }
        if *n > report.max_duplicates_per_kill {
            report.max_duplicates_per_kill = *n;
            report.in_flight_at_that_kill = running;
        }
    }
    for (fi, n) in &per_failover {
        let (fpos, at) = failovers[*fi];
        // Runs going on at the failover (or delivered just before it and started just
        // after), and runs that succeeded less than a second before it (their
        // acknowledgement may not have reached a replica).
        let held = runs
            .values()
            .flatten()
            .filter(|r| {
                r.start <= at + 1.0
                    && match r.ended {
                        None => true,
                        Some((ok, p, t)) => p > fpos || (ok && at - t < 1.0),
                    }
            })
            .count();
        if *n > held {
            report.violations.push(format!(
                "a failover caused {n} extra runs but only {held} tasks were held at it"
            ));
        }
    }
    let (m, x) = median_max(recovery.values().copied().collect());
    report.kill_recovery_median_s = m;
    report.kill_recovery_max_s = x;
    let gaps: Vec<f64> = redis_back
        .iter()
        .filter_map(|&u| {
            let i = starts.partition_point(|&c| c < u);
            starts.get(i).map(|&c| c - u)
        })
        .collect();
    let (m, x) = median_max(gaps);
    report.redis_recovery_median_s = m;
    report.redis_recovery_max_s = x;
}
