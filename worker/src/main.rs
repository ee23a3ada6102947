//! `workpool-worker`: run a worker, submit tasks, or print queue stats.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use workpool_client::submit::{Durable, Submitted, Task};
use workpool_client::{
    DeadLetter, DeadLetterFilter, DeadLetterRef, Layout, Pool as ClientPool, display,
};
use workpool_worker::handler::{Builtin, Handler};
use workpool_worker::metrics::{Health, Metrics};
use workpool_worker::queue::Pool;
use workpool_worker::runtime::{self, ResultsConfig, WorkerConfig};
use workpool_worker::target::{Target, Tls};

const ENV_HELP: &str = "\
Every flag can also be set from the environment (the flag wins):
  WORKPOOL_REDIS_URL, WORKPOOL_REDIS_CA_FILE, WORKPOOL_REDIS_CERT_FILE, WORKPOOL_REDIS_KEY_FILE,
  WORKPOOL_STREAM, WORKPOOL_PARTITIONS, WORKPOOL_GROUP, WORKPOOL_CONSUMER,
  WORKPOOL_CONCURRENCY, WORKPOOL_BATCH, WORKPOOL_VISIBILITY_TIMEOUT,
  WORKPOOL_MAX_DELIVERIES, WORKPOOL_DEAD_LETTER_STREAM, WORKPOOL_METRICS_ADDR,
  WORKPOOL_SHUTDOWN_GRACE, WORKPOOL_RETRY_BACKOFF, WORKPOOL_RETRY_BACKOFF_MAX,
  WORKPOOL_TASK_TIMEOUT, WORKPOOL_RESULTS_TTL, WORKPOOL_RESULTS_MAX_OUTPUT,
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
    /// Inspect, retry and purge dead letters (list | show | retry | purge).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// List dead letters, oldest first (partitions merged), with filters.
    #[command(after_help = ENV_HELP)]
    List(DlListArgs),
    /// Print one dead letter as JSON: REF is [<partition>/]<ms>-<seq>, as `list` shows it.
    #[command(after_help = ENV_HELP)]
    Show(DlShowArgs),
    /// Put dead letters back into their task stream (each one atomically: added to the
    /// stream and removed from the dead letters in one step; never twice): by REF, or
    /// --all (those matching the filters that exist when the command starts).
    #[command(after_help = ENV_HELP)]
    Retry(DlChangeArgs),
    /// Delete dead letters: by REF, or --all (with the filters).
    #[command(after_help = ENV_HELP)]
    Purge(DlChangeArgs),
}

#[derive(Args, Debug)]
struct DlTargetArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Dead-letter stream, when not the default <stream>:dead (with partitions or on
    /// Cluster: the name after each partition's stream, as the worker's flag).
    #[arg(long, env = "WORKPOOL_DEAD_LETTER_STREAM")]
    dead_letter_stream: Option<String>,
}

#[derive(Args, Debug, Default)]
struct DlFilterArgs {
    /// Only this partition.
    #[arg(long)]
    partition: Option<usize>,
    /// Dead-lettered at or after this time: milliseconds since the epoch, or an age like
    /// 90s, 15m, 2h, 7d (that long ago).
    #[arg(long, value_parser = parse_time_ms)]
    since: Option<u64>,
    /// Dead-lettered at or before this time (same forms as --since).
    #[arg(long, value_parser = parse_time_ms)]
    until: Option<u64>,
    /// Whose error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Of this task id.
    #[arg(long)]
    task_id: Option<String>,
    /// Written by this consumer (worker).
    #[arg(long)]
    consumer: Option<String>,
    /// Delivered at least this many times.
    #[arg(long)]
    min_deliveries: Option<u64>,
}

impl DlFilterArgs {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            partition: self.partition,
            since_ms: self.since,
            until_ms: self.until,
            error_contains: self.error.clone(),
            task_id: self.task_id.clone(),
            consumer: self.consumer.clone(),
            min_deliveries: self.min_deliveries,
        }
    }

    fn is_empty(&self) -> bool {
        self.partition.is_none() && self.filter().is_all()
    }
}

#[derive(Args, Debug)]
struct DlListArgs {
    #[command(flatten)]
    target: DlTargetArgs,
    #[command(flatten)]
    filter: DlFilterArgs,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first.
    #[arg(long)]
    newest_first: bool,
    /// Print one JSON array of dead letters.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DlShowArgs {
    #[command(flatten)]
    target: DlTargetArgs,
    /// The dead letter: [<partition>/]<ms>-<seq>.
    #[arg(value_name = "REF")]
    reference: String,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).multiple(false).args(["all", "refs"])))]
struct DlChangeArgs {
    #[command(flatten)]
    target: DlTargetArgs,
    /// Every dead letter (matching the filters) that exists when the command starts.
    #[arg(long)]
    all: bool,
    /// Dead letters by reference ([<partition>/]<ms>-<seq>, as `list` shows them).
    #[arg(value_name = "REF")]
    refs: Vec<String>,
    #[command(flatten)]
    filter: DlFilterArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
    /// Record each task's outcome for producers (`status`, `wait_for`; docs/protocol.md
    /// section 8) and keep it this many seconds [default: off, nothing written].
    #[arg(long, env = "WORKPOOL_RESULTS_TTL", value_parser = parse_secs)]
    results_ttl: Option<Duration>,
    /// With --results-ttl: the most bytes of a handler's output (--exec stdout, --http
    /// response body) a result keeps (0 to 16 MiB); more is cut and marked truncated.
    #[arg(long, env = "WORKPOOL_RESULTS_MAX_OUTPUT", default_value_t = workpool_worker::runtime::DEFAULT_RESULT_MAX_OUTPUT,
        value_parser = clap::value_parser!(u64).range(0..=workpool_worker::runtime::MAX_RESULT_MAX_OUTPUT),
        requires = "results_ttl")]
    results_max_output: u64,
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
            Command::DeadLetters(c) => dead_letters(c).await,
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
fn layout_of(
    r: &RedisArgs,
    target: &Target,
    group: &str,
    dead_letter: Option<String>,
) -> anyhow::Result<Layout> {
    let mut layout = Layout::new(r.stream.clone(), group.to_string())
        .with_partitions(r.partitions)
        .with_cluster(target.is_cluster());
    if let Some(dl) = dead_letter {
        layout = layout.with_dead_letter_stream(dl);
    }
    layout.validate()?;
    Ok(layout)
}

/// The client of the one-shot commands (submit, stats, dead-letters), with an error
/// naming the (password-redacted) URL.
async fn connect_pool(target: &Target, layout: Layout) -> anyhow::Result<ClientPool> {
    ClientPool::connect(target, layout)
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
    let pool = Pool::from_layout(layout_of(
        &a.redis,
        &target,
        &a.group,
        a.dead_letter_stream,
    )?);
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
        results: a.results_ttl.map(|ttl| ResultsConfig {
            ttl,
            // At most MAX_RESULT_MAX_OUTPUT (16 MiB): fits a usize everywhere.
            max_output: usize::try_from(a.results_max_output).unwrap_or(usize::MAX),
        }),
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

/// Tasks submitted per `submit_many` call: bounds the memory of `--count` with large
/// counts (the client keeps its round robin across calls).
const SUBMIT_GROUP: usize = 50_000;

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    check_names(&a.redis.stream, None)?;
    let (target, _) = check_url(&a.redis)?;
    let layout = layout_of(&a.redis, &target, &a.redis.stream, None)?;
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
    let pool = connect_pool(&target, layout)
        .await?
        .with_pipeline(a.pipeline as usize);
    let durable = a.min_replicas.map(|m| Durable {
        min_replicas: m,
        timeout: a.wait_timeout,
    });
    let task = |j: u64| {
        let payload = if a.payload.is_some() {
            &payloads[0]
        } else {
            &payloads[j as usize]
        };
        let mut t = Task::new(payload.clone());
        if let Some(k) = &a.key {
            t = t.with_key(k.as_bytes().to_vec());
        } else if let Some(k) = keys.get(j as usize) {
            t = t.with_key(k.clone());
        }
        t
    };
    let mut done = 0u64;
    let mut unconfirmed: Vec<(u64, Submitted)> = Vec::new();
    let mut start = 0u64;
    while start < total {
        let end = (start + SUBMIT_GROUP as u64).min(total);
        let tasks: Vec<Task> = (start..end).map(task).collect();
        match pool.submit_many(tasks, durable).await {
            Ok(subs) => {
                done += subs.len() as u64;
                for (j, s) in (start..end).zip(subs) {
                    if s.confirmed == Some(false) {
                        unconfirmed.push((j, s));
                    }
                }
            }
            Err(e) => {
                let n = done + e.submitted.iter().filter(|s| s.is_some()).count() as u64;
                bail!("enqueue failed after {n} tasks: {}", e.source);
            }
        }
        start = end;
    }
    let mut out = format!("enqueued {done}\n");
    if let Some(m) = a.min_replicas {
        out += &format!(
            "confirmed by at least {m} replica{}: {}\n",
            if m == 1 { "" } else { "s" },
            done - unconfirmed.len() as u64
        );
        for (j, s) in &unconfirmed {
            out += &format!(
                "not confirmed: task {} (stream {}, entry {})\n",
                j + 1,
                pool.layout().partition_stream(s.partition),
                s.entry_id
            );
        }
    }
    emit(&out)?;
    if !unconfirmed.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "error: {} of {done} tasks were not confirmed by {} replica(s) within {:.3}s: they are in the queue, but a failover could lose them",
            unconfirmed.len(),
            a.min_replicas.unwrap_or(0),
            a.wait_timeout.as_secs_f64()
        );
        return Err(Exit(EXIT_UNCONFIRMED).into());
    }
    Ok(())
}

async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    check_names(&a.redis.stream, Some(&a.group))?;
    let (target, _) = check_url(&a.redis)?;
    let layout = layout_of(&a.redis, &target, &a.group, a.dead_letter_stream)?;
    let st = connect_pool(&target, layout).await?.stats().await?;
    if a.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&st)?))
    } else {
        emit(&display::stats(&st))
    }
}

/// `--since` / `--until`: ms since the epoch, or an age (`90s`, `15m`, `2h`, `7d`) back
/// from now.
fn parse_time_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is neither milliseconds since the epoch nor an age like 15m")
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit of an age is s, m, h or d")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    Ok(now.saturating_sub(secs.saturating_mul(1000)))
}

/// The client pool of a dead-letter command (no group: none is needed).
async fn dead_letter_pool(t: &DlTargetArgs) -> anyhow::Result<ClientPool> {
    check_names(&t.redis.stream, None)?;
    let (target, _) = check_url(&t.redis)?;
    let layout = layout_of(
        &t.redis,
        &target,
        &t.redis.stream,
        t.dead_letter_stream.clone(),
    )?;
    connect_pool(&target, layout).await
}

fn parse_refs(refs: &[String]) -> anyhow::Result<Vec<DeadLetterRef>> {
    refs.iter()
        .map(|r| r.parse::<DeadLetterRef>().map_err(anyhow::Error::from))
        .collect()
}

async fn dead_letters(cmd: DeadLetterCommand) -> anyhow::Result<()> {
    match cmd {
        DeadLetterCommand::List(a) => {
            let pool = dead_letter_pool(&a.target).await?;
            let limit = (a.limit > 0).then_some(a.limit);
            let list = pool
                .dead_letters(&a.filter.filter(), limit, a.newest_first)
                .await?;
            if a.json {
                let arr: Vec<serde_json::Value> = list.iter().map(DeadLetter::to_json).collect();
                return emit(&format!("{}\n", serde_json::to_string_pretty(&arr)?));
            }
            let mut out = display::dead_letters(&list);
            if limit.is_some_and(|l| list.len() >= l) {
                out += "(--limit reached; --limit 0 lists all)\n";
            }
            emit(&out)
        }
        DeadLetterCommand::Show(a) => {
            let r: DeadLetterRef = a.reference.parse()?;
            let pool = dead_letter_pool(&a.target).await?;
            match pool.dead_letter(r).await? {
                Some(d) => emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&d.to_json())?
                )),
                None => bail!(
                    "no dead letter {r} in {}",
                    pool.layout().dead_letter_stream(r.partition)
                ),
            }
        }
        DeadLetterCommand::Retry(a) => {
            let refs = check_change(&a)?;
            let pool = dead_letter_pool(&a.target).await?;
            let outcomes = if a.all {
                pool.retry_all_dead_letters(&a.filter.filter()).await?
            } else {
                pool.retry_dead_letters(&refs).await?
            };
            let missing: Vec<String> = outcomes
                .iter()
                .filter(|o| o.entry_id.is_none())
                .map(|o| o.reference.to_string())
                .collect();
            if a.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&outcomes)?))?;
            } else {
                let mut out = String::new();
                for o in &outcomes {
                    match o.entry_id {
                        Some(id) => {
                            out += &format!(
                                "retried {} -> {} {id}\n",
                                o.reference,
                                pool.layout().partition_stream(o.reference.partition)
                            )
                        }
                        None => {
                            out +=
                                &format!("not there: {} (already retried or purged)\n", o.reference)
                        }
                    }
                }
                out += &format!("retried {}\n", outcomes.len() - missing.len());
                emit(&out)?;
            }
            if !missing.is_empty() && !a.all {
                bail!(
                    "{} of {} dead letters were not there (already retried or purged): {}",
                    missing.len(),
                    outcomes.len(),
                    missing.join(" ")
                );
            }
            Ok(())
        }
        DeadLetterCommand::Purge(a) => {
            let refs = check_change(&a)?;
            let pool = dead_letter_pool(&a.target).await?;
            let n = if a.all {
                pool.purge_all_dead_letters(&a.filter.filter()).await?
            } else {
                pool.purge_dead_letters(&refs).await?
            };
            if a.json {
                emit(&format!("{}\n", serde_json::json!({ "purged": n })))?;
            } else {
                emit(&format!("purged {n}\n"))?;
            }
            if !a.all && (n as usize) < refs.len() {
                bail!(
                    "{} of {} dead letters were not there (already retried or purged)",
                    refs.len() - n as usize,
                    refs.len()
                );
            }
            Ok(())
        }
    }
}

/// The references of `retry` / `purge`, checked before anything is changed: filters go
/// with --all only (with references they would be ignored).
fn check_change(a: &DlChangeArgs) -> anyhow::Result<Vec<DeadLetterRef>> {
    if !a.all && !a.filter.is_empty() {
        bail!(
            "the filters (--partition, --since, --until, --error, --task-id, --consumer, --min-deliveries) go with --all, not with references"
        );
    }
    parse_refs(&a.refs)
}
