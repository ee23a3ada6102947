//! `workpool-worker`: run a worker, submit tasks, or print queue stats.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use workpool_worker::handler::{Builtin, Handler};
use workpool_worker::metrics::{Health, Metrics};
use workpool_worker::queue::{EntryId, NewTask, Pool, QueueStats};
use workpool_worker::runtime::{self, WorkerConfig};
use workpool_worker::target::{Connection, Target, Tls};

const ENV_HELP: &str = "\
Every flag can also be set from the environment (the flag wins):
  WORKPOOL_REDIS_URL, WORKPOOL_REDIS_CA_FILE, WORKPOOL_REDIS_CERT_FILE, WORKPOOL_REDIS_KEY_FILE,
  WORKPOOL_STREAM, WORKPOOL_PARTITIONS, WORKPOOL_GROUP, WORKPOOL_CONSUMER,
  WORKPOOL_CONCURRENCY, WORKPOOL_BATCH, WORKPOOL_VISIBILITY_TIMEOUT,
  WORKPOOL_MAX_DELIVERIES, WORKPOOL_DEAD_LETTER_STREAM, WORKPOOL_METRICS_ADDR,
  WORKPOOL_SHUTDOWN_GRACE, WORKPOOL_RETRY_BACKOFF, WORKPOOL_RETRY_BACKOFF_MAX,
  WORKPOOL_TASK_TIMEOUT,
  WORKPOOL_BUILTIN, WORKPOOL_HTTP, WORKPOOL_EXEC (a shell command line run with sh -c),
  WORKPOOL_LOG_FORMAT. Log levels: RUST_LOG (default info).";

#[derive(Parser, Debug)]
#[command(
    name = "workpool-worker",
    version,
    about = "The workpool worker: runs tasks from a Redis Streams queue",
    after_help = ENV_HELP
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "WORKPOOL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker: read tasks, run the handler, acknowledge, retry, dead-letter.
    #[command(after_help = ENV_HELP)]
    Run(Box<RunArgs>),
    /// Enqueue tasks: --payload JSON [--count N], or JSON lines on stdin.
    #[command(after_help = ENV_HELP)]
    Submit(SubmitArgs),
    /// Print queue statistics (backlog, pending, dead letters, consumers).
    #[command(after_help = ENV_HELP)]
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
struct RedisArgs {
    /// Where the queue lives: redis://host:6379/0 (rediss:// for TLS), or
    /// redis+sentinel://h1:26379,h2:26379/MASTER[/db] (a Sentinel-managed primary,
    /// followed across failovers), or redis+cluster://h1:7000,h2:7001 (a Redis Cluster);
    /// rediss+sentinel:// and rediss+cluster:// with TLS.
    #[arg(long, env = "WORKPOOL_REDIS_URL")]
    redis_url: String,
    /// PEM file with the CA certificate(s) to verify rediss servers against, instead of
    /// the system's trusted roots (e.g. a private or self-signed CA).
    #[arg(long, env = "WORKPOOL_REDIS_CA_FILE", value_name = "PEM_FILE")]
    redis_ca_file: Option<std::path::PathBuf>,
    /// PEM file with a client certificate for servers that require one (mTLS); needs
    /// --redis-key-file.
    #[arg(long, env = "WORKPOOL_REDIS_CERT_FILE", value_name = "PEM_FILE")]
    redis_cert_file: Option<std::path::PathBuf>,
    /// PEM file with the private key of --redis-cert-file.
    #[arg(long, env = "WORKPOOL_REDIS_KEY_FILE", value_name = "PEM_FILE")]
    redis_key_file: Option<std::path::PathBuf>,
    /// The task stream (the name of partition 0; see docs/partitions-and-keys.md).
    #[arg(long, env = "WORKPOOL_STREAM")]
    stream: String,
    /// Partitions of the pool: each its own stream, group and dead-letter stream (and
    /// hash slot on Redis Cluster).
    #[arg(long, env = "WORKPOOL_PARTITIONS", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(workpool_worker::queue::MAX_PARTITIONS)))]
    partitions: u32,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("handler").required(true).multiple(false)
    .args(["builtin", "exec", "exec_shell", "http"])))]
struct RunArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The consumer group (one per pool).
    #[arg(long, env = "WORKPOOL_GROUP")]
    group: String,
    /// This worker's consumer name, unique in the group (the pod name).
    #[arg(long, env = "WORKPOOL_CONSUMER")]
    consumer: String,
    /// Tasks run at once [default: 1000 for --builtin, 32 for --http, one per CPU for --exec].
    #[arg(long, env = "WORKPOOL_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: Option<u32>,
    /// Entries fetched per read [default: min(concurrency, 250)].
    #[arg(long, env = "WORKPOOL_BATCH", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: Option<u32>,
    /// Seconds a task may stay unacknowledged by a silent worker before it is reclaimed
    /// (fractions allowed). Live workers renew their leases every third of it, so tasks
    /// may run longer; a shorter timeout brings a dead worker's tasks back sooner, but a
    /// worker cut off from Redis for longer than it loses its tasks to others.
    #[arg(long, env = "WORKPOOL_VISIBILITY_TIMEOUT", default_value = "30", value_parser = parse_secs)]
    visibility_timeout: Duration,
    /// Deliveries of a task before it goes to the dead-letter stream.
    #[arg(long, env = "WORKPOOL_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_deliveries: u32,
    /// Dead-letter stream [default: <stream>:dead].
    #[arg(long, env = "WORKPOOL_DEAD_LETTER_STREAM")]
    dead_letter_stream: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints (port 0: any free port).
    #[arg(long, env = "WORKPOOL_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Seconds to finish in-flight tasks after SIGTERM/SIGINT before handing them back.
    #[arg(long, env = "WORKPOOL_SHUTDOWN_GRACE", default_value = "25", value_parser = parse_secs_or_zero)]
    shutdown_grace: Duration,
    /// Seconds before the first retry of a failed task (doubles per delivery).
    #[arg(long, env = "WORKPOOL_RETRY_BACKOFF", default_value = "1", value_parser = parse_secs_or_zero)]
    retry_backoff: Duration,
    /// Maximum seconds between retries.
    #[arg(long, env = "WORKPOOL_RETRY_BACKOFF_MAX", default_value = "60", value_parser = parse_secs_or_zero)]
    retry_backoff_max: Duration,
    /// Seconds a single run may take before it is stopped and counted as failed
    /// [default: no limit].
    #[arg(long, env = "WORKPOOL_TASK_TIMEOUT", value_parser = parse_secs)]
    task_timeout: Option<Duration>,
    /// Built-in handler: noop, sleep (payload {"ms": N}) or fail (always fails).
    #[arg(long, env = "WORKPOOL_BUILTIN", value_enum)]
    builtin: Option<Builtin>,
    /// Run CMD [ARGS...] per task: payload on stdin, exit 0 = done, exit 100 = failed for
    /// good (dead-lettered at once, no retry); WORKPOOL_TASK_ID and
    /// WORKPOOL_DELIVERY in its environment; its stderr tail becomes the error. Must be
    /// the last flag: everything after it belongs to the command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD [ARGS...]")]
    exec: Option<Vec<String>>,
    /// Like --exec with one shell command line run by `sh -c`.
    #[arg(long, env = "WORKPOOL_EXEC", value_name = "SHELL_COMMAND")]
    exec_shell: Option<String>,
    /// POST each payload to this URL (e.g. http://127.0.0.1:8080/task); 2xx = done, 4xx
    /// other than 408/429 = failed for good (dead-lettered at once, no retry).
    #[arg(long, env = "WORKPOOL_HTTP", value_name = "URL")]
    http: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").multiple(false).args(["payload", "stdin"])))]
struct SubmitArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The payload of every task (must be valid JSON).
    #[arg(long)]
    payload: Option<String>,
    /// How many tasks with --payload.
    #[arg(long, default_value_t = 1, requires = "payload")]
    count: u64,
    /// Read one JSON payload per line from stdin (the default without --payload).
    #[arg(long)]
    stdin: bool,
    /// Tasks per pipeline.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pipeline: u32,
    /// Put every task into the partition of this key (CRC16 of the key mod the
    /// partitions) instead of spreading them round robin.
    #[arg(long, conflicts_with = "key_field")]
    key: Option<String>,
    /// Each stdin line's partition comes from this field of its JSON object (a string or
    /// a number); a line without it is refused before anything is enqueued.
    #[arg(long, requires = "stdin")]
    key_field: Option<String>,
    /// Durable submit: after each pipeline, wait until this many replicas have its tasks
    /// (Redis WAIT). Tasks not confirmed in time are listed and the exit code is 3: they
    /// are in the queue but a failover of the primary could lose them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    min_replicas: Option<u32>,
    /// Seconds to wait for the replicas with --min-replicas.
    #[arg(long, default_value = "5", value_parser = parse_secs, requires = "min_replicas")]
    wait_timeout: Duration,
}

#[derive(Args, Debug)]
struct StatsArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The consumer group.
    #[arg(long, env = "WORKPOOL_GROUP")]
    group: String,
    /// Dead-letter stream [default: <stream>:dead].
    #[arg(long, env = "WORKPOOL_DEAD_LETTER_STREAM")]
    dead_letter_stream: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_secs_impl(s: &str, allow_zero: bool) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 1e9 {
        return Err(format!(
            "{s:?} must be {} number of seconds",
            if allow_zero {
                "a non-negative"
            } else {
                "a positive"
            }
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    parse_secs_impl(s, false)
}

fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    parse_secs_impl(s, true)
}

/// Log output that never fails: a worker whose stderr is gone (closed pipe, full disk)
/// must keep working and keep honouring SIGTERM, not die in the logger.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Writes command output to stdout; a reader that went away (`stats | head`) is not an
/// error worth a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// The exit code of `submit` when some tasks were not confirmed by --min-replicas.
const EXIT_UNCONFIRMED: u8 = 3;

/// A failed command whose exit code is not 1.
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Submit(a) => submit(a).await,
            Command::Stats(a) => stats(a).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => {
            ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |x| x.0))
        }
        Err(e) => {
            if json_logs {
                error!("{e:#}");
            } else {
                let _ = writeln!(std::io::stderr(), "error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check_names(stream: &str, group: Option<&str>) -> anyhow::Result<()> {
    if stream.trim().is_empty() {
        bail!("--stream must not be empty");
    }
    if let Some(g) = group
        && g.trim().is_empty()
    {
        bail!("--group must not be empty");
    }
    Ok(())
}

/// Where `program` would be started from (as `execvp` looks it up), or an error naming it.
fn find_program(program: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return if runnable(&p) {
            Ok(p)
        } else {
            bail!("--exec program {program:?} does not exist or is not executable")
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
        .with_context(|| format!("--exec program {program:?} is not found in PATH"))
}

/// The TLS files' contents (CA, client certificate and key), checked.
fn read_tls(r: &RedisArgs) -> anyhow::Result<Tls> {
    Ok(Tls::from_files(
        r.redis_ca_file.as_deref(),
        r.redis_cert_file.as_deref(),
        r.redis_key_file.as_deref(),
    )?)
}

fn check_url(r: &RedisArgs) -> anyhow::Result<(Target, Tls)> {
    let tls = read_tls(r)?;
    let target = Target::new(&r.redis_url, &tls).map_err(|e| {
        anyhow::anyhow!(
            "invalid --redis-url {:?}: {e}",
            runtime::redacted(&r.redis_url)
        )
    })?;
    Ok((target, tls))
}

/// The pool's key names for this target.
fn pool_of(
    r: &RedisArgs,
    target: &Target,
    group: &str,
    dead_letter: Option<String>,
) -> anyhow::Result<Pool> {
    let mut pool = Pool::new(r.stream.clone(), group.to_string())
        .with_partitions(r.partitions)
        .with_cluster(target.is_cluster());
    if let Some(dl) = dead_letter {
        pool = pool.with_dead_letter_stream(dl);
    }
    pool.validate()?;
    Ok(pool)
}

/// A connection for the one-shot commands (submit, stats), with an error naming the
/// (password-redacted) URL.
async fn connect_cli(target: &Target) -> anyhow::Result<Connection> {
    target
        .connect(Some(Duration::from_secs(30)))
        .await
        .with_context(|| format!("cannot connect to redis at {}", target.redacted()))
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    check_names(&a.redis.stream, Some(&a.group))?;
    if a.consumer.trim().is_empty() {
        bail!("--consumer must not be empty");
    }
    let (target, tls) = check_url(&a.redis)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (handler, default_conc) = if let Some(b) = a.builtin {
        (Handler::Builtin(b), 1000)
    } else if let Some(cmd) = a.exec {
        let mut it = cmd.into_iter();
        let program = it
            .next()
            .filter(|p| !p.is_empty())
            .context("--exec needs a command")?;
        // A program that cannot start would fail every task into the dead-letter
        // stream; refuse it at startup instead, where the pod's crash says why.
        find_program(&program)?;
        (
            Handler::Exec {
                program,
                args: it.collect(),
            },
            cpus,
        )
    } else if let Some(sh) = a.exec_shell {
        if sh.trim().is_empty() {
            bail!("--exec-shell (WORKPOOL_EXEC) must not be empty");
        }
        (
            Handler::Exec {
                program: "sh".into(),
                args: vec!["-c".into(), sh],
            },
            cpus,
        )
    } else if let Some(url) = a.http {
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("invalid --http URL {url:?}: {e}"))?;
        if parsed.scheme() != "http" {
            bail!(
                "invalid --http URL {url:?}: only http:// is supported (the handler runs in the same pod)"
            );
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .context("creating the HTTP client")?;
        (Handler::Http { url, client }, 32)
    } else {
        bail!("choose a handler: --builtin, --exec, --exec-shell or --http");
    };
    let concurrency = a.concurrency.map(|c| c as usize).unwrap_or(default_conc);
    let batch = a
        .batch
        .map(|b| b as usize)
        .unwrap_or_else(|| concurrency.min(250));
    let pool = pool_of(&a.redis, &target, &a.group, a.dead_letter_stream)?;
    let cfg = WorkerConfig {
        redis_url: a.redis.redis_url,
        pool,
        consumer: a.consumer,
        concurrency,
        batch,
        visibility_timeout: a.visibility_timeout,
        max_deliveries: a.max_deliveries,
        retry_backoff: a.retry_backoff,
        retry_backoff_max: a.retry_backoff_max.max(a.retry_backoff),
        shutdown_grace: a.shutdown_grace,
        task_timeout: a.task_timeout,
        tls,
    };

    let metrics = Metrics::new().context("creating metrics")?;
    let health = Health::new(metrics);
    let http_stop = CancellationToken::new();
    let (bound, http) =
        workpool_worker::metrics::serve(a.metrics_addr, health.clone(), http_stop.clone())
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {}", a.metrics_addr))?;
    let streams: Vec<String> = cfg
        .pool
        .queues()
        .iter()
        .map(|q| q.stream().to_string())
        .collect();
    let dead_letter_streams: Vec<String> = cfg
        .pool
        .queues()
        .iter()
        .map(|q| q.dead_letter_stream().to_string())
        .collect();
    info!(
        metrics_addr = %bound,
        redis = %target.redacted(),
        mode = %target.mode(),
        streams = streams.join(","),
        group = cfg.pool.group(),
        consumer = %cfg.consumer,
        concurrency,
        batch,
        visibility_timeout_secs = cfg.visibility_timeout.as_secs_f64(),
        max_deliveries = cfg.max_deliveries,
        dead_letter_streams = dead_letter_streams.join(","),
        "workpool worker starting; serving /metrics, /healthz, /readyz on {bound}"
    );

    let shutdown = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                n += 1;
                // Act first, then log: the log line must never stand between a signal
                // and the drain it asks for.
                if n == 1 {
                    shutdown.cancel();
                    info!(signal = name, "received signal: draining");
                } else {
                    hard_stop.cancel();
                    info!(signal = name, "received a second signal: stopping now");
                }
            }
        });
    }
    runtime::run(cfg, handler, health, shutdown, hard_stop).await?;
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    Ok(())
}

/// The partition key of a stdin line from its JSON field `field` (a string, or the JSON
/// text of a number or boolean).
fn key_of_line(line: &[u8], field: &str) -> Result<Vec<u8>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not valid JSON: {e}"))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(n @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(n.to_string().into_bytes())
        }
        Some(_) => Err(format!(
            "the key field {field:?} is not a string or a number"
        )),
        None => Err(format!(
            "no key field {field:?} (a JSON object with it is expected)"
        )),
    }
}

/// Task indexes grouped into pipelines of at most `per` tasks of one partition, in input
/// order within each partition.
fn batches(
    total: u64,
    partitions: usize,
    per: usize,
    partition_of: impl Fn(u64) -> usize,
) -> impl Iterator<Item = (usize, Vec<u64>)> {
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); partitions.max(1)];
    let mut j = 0u64;
    std::iter::from_fn(move || {
        while j < total {
            let p = partition_of(j);
            j += 1;
            buckets[p].push(j - 1);
            if buckets[p].len() >= per {
                return Some((p, std::mem::take(&mut buckets[p])));
            }
        }
        let p = buckets.iter().position(|b| !b.is_empty())?;
        Some((p, std::mem::take(&mut buckets[p])))
    })
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    check_names(&a.redis.stream, None)?;
    let (target, _) = check_url(&a.redis)?;
    let pool = pool_of(&a.redis, &target, "unused", None)?;
    // Validate everything first: bad input enqueues nothing.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let payloads: Vec<Vec<u8>> = if let Some(p) = &a.payload {
        serde_json::from_str::<serde::de::IgnoredAny>(p)
            .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
        vec![p.clone().into_bytes()]
    } else {
        let mut input = Vec::new();
        std::io::stdin()
            .read_to_end(&mut input)
            .context("reading stdin")?;
        let mut out = Vec::new();
        for (i, line) in input.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map_err(|e| anyhow::anyhow!("stdin line {}: not valid JSON: {e}", i + 1))?;
            if let Some(field) = &a.key_field {
                keys.push(
                    key_of_line(line, field)
                        .map_err(|e| anyhow::anyhow!("stdin line {}: {e}", i + 1))?,
                );
            }
            out.push(line.to_vec());
        }
        out
    };
    let total: u64 = if a.payload.is_some() {
        a.count
    } else {
        payloads.len() as u64
    };
    let conn = connect_cli(&target).await?;
    let queues = pool.queues();
    let n = pool.partitions();
    // Round robin from a random partition: many short-lived producers still spread.
    let first = rand::random_range(0..n);
    let fixed_partition = a.key.as_ref().map(|k| pool.partition_for_key(k.as_bytes()));
    let partition_of = |j: u64| -> usize {
        if let Some(p) = fixed_partition {
            p
        } else if let Some(k) = keys.get(j as usize) {
            pool.partition_for_key(k)
        } else {
            (first + (j % n as u64) as usize) % n
        }
    };
    let payloads = &payloads;
    let queues = &queues;
    let fixed = a.payload.is_some();
    let min_replicas = a.min_replicas;
    let wait_timeout = a.wait_timeout;
    let mut results = futures::stream::iter(batches(total, n, a.pipeline as usize, partition_of))
        .map(|(p, idx)| {
            let mut c = conn.clone();
            async move {
                let tasks: Vec<NewTask<'_>> = idx
                    .iter()
                    .map(|&j| {
                        NewTask::new(if fixed {
                            &payloads[0]
                        } else {
                            &payloads[j as usize]
                        })
                    })
                    .collect();
                let q = &queues[p];
                let r = match min_replicas {
                    None => q.enqueue(&mut c, &tasks).await.map(|ids| (ids, None)),
                    Some(m) => q
                        .enqueue_wait(&mut c, &tasks, m, wait_timeout)
                        .await
                        .map(|(ids, acked)| (ids, Some(acked))),
                };
                r.map(|(ids, acked)| (p, idx, ids, acked))
            }
        })
        .buffered(8);
    let mut done = 0u64;
    let mut unconfirmed: Vec<(usize, u64, EntryId)> = Vec::new();
    while let Some(r) = results.next().await {
        match r {
            Ok((p, idx, ids, acked)) => {
                done += ids.len() as u64;
                if let (Some(m), Some(acked)) = (min_replicas, acked)
                    && acked < u64::from(m)
                {
                    unconfirmed.extend(idx.into_iter().zip(ids).map(|(j, id)| (p, j, id)));
                }
            }
            Err(e) => bail!("enqueue failed after {done} tasks: {e}"),
        }
    }
    let mut out = format!("enqueued {done}\n");
    if let Some(m) = min_replicas {
        out += &format!(
            "confirmed by at least {m} replica{}: {}\n",
            if m == 1 { "" } else { "s" },
            done - unconfirmed.len() as u64
        );
        unconfirmed.sort_by_key(|(_, j, _)| *j);
        for (p, j, id) in &unconfirmed {
            out += &format!(
                "not confirmed: task {} (stream {}, entry {id})\n",
                j + 1,
                queues[*p].stream()
            );
        }
    }
    emit(&out)?;
    if !unconfirmed.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "error: {} of {done} tasks were not confirmed by {} replica(s) within {:.3}s: they are in the queue, but a failover could lose them",
            unconfirmed.len(),
            min_replicas.unwrap_or(0),
            wait_timeout.as_secs_f64()
        );
        return Err(Exit(EXIT_UNCONFIRMED).into());
    }
    Ok(())
}

async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    check_names(&a.redis.stream, Some(&a.group))?;
    let (target, _) = check_url(&a.redis)?;
    let pool = pool_of(&a.redis, &target, &a.group, a.dead_letter_stream)?;
    let conn = connect_cli(&target).await?;
    let st = pool.stats(&conn).await?;
    if a.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&st)?))
    } else {
        emit(&format_stats(&st))
    }
}

fn format_stats(st: &QueueStats) -> String {
    let lag_note = if st.lag_estimated {
        " (estimated: too many entries to count)"
    } else if st.lag_computed {
        " (counted: redis reported none or a wrong one)"
    } else {
        ""
    };
    let deleted_note = if st.pending_deleted > 0 {
        format!(
            " ({} of them deleted from the stream: not in the backlog)",
            st.pending_deleted
        )
    } else {
        String::new()
    };
    let oldest = match st.oldest_pending_age_ms {
        Some(ms) => format!("{:.3}s", ms as f64 / 1000.0),
        None => "-".to_string(),
    };
    let mut out = format!(
        "stream:        {} (exists: {}, length: {})\n\
         group:         {} (exists: {})\n\
         backlog:       {}\n\
         lag:           {}{lag_note}\n\
         pending:       {}{deleted_note}\n\
         dead letters:  {}\n\
         oldest pending: {oldest}\n\
         consumers:     {}\n",
        st.stream,
        st.stream_exists,
        st.stream_length,
        st.group,
        st.group_exists,
        st.backlog,
        st.lag,
        st.pending,
        st.dead_letters,
        st.consumers.len(),
    );
    for c in &st.consumers {
        out += &format!(
            "  {:<30} pending {:>8}  idle {:>10.3}s\n",
            c.name,
            c.pending,
            c.idle_ms as f64 / 1000.0
        );
    }
    if st.partitions.len() > 1 {
        out += &format!("partitions:    {}\n", st.partitions.len());
        for (i, p) in st.partitions.iter().enumerate() {
            out += &format!(
                "  {i:<3} {:<30} backlog {:>8}  pending {:>8}  dead letters {:>6}  ({})\n",
                p.stream,
                p.backlog,
                p.pending,
                p.dead_letters,
                if p.group_exists {
                    "group exists"
                } else {
                    "no group yet"
                }
            );
        }
    }
    out
}
