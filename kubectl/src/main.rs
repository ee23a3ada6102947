//! `kubectl workpool`: a WorkPool's queue from the command line, with the caller's own
//! kubeconfig and RBAC. It reads the WorkPool, finds its Redis as the operator does (the
//! URL in the spec or the Secret `urlSecretRef` names, the TLS material of its Secrets:
//! `workpool_operator::probe::QueueTargets`), and works on the queue with the Rust client
//! (`workpool-client`), the same code as `workpool-worker stats | submit | dead-letters`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use workpool_client::submit::Task;
use workpool_client::{DeadLetter, DeadLetterFilter, DeadLetterRef, Pool, display};
use workpool_operator::crd::WorkPool;
use workpool_operator::observe::{keys_on, queue_of};
use workpool_operator::probe::{ProbeError, QueueTargets};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-workpool",
    bin_name = "kubectl workpool",
    version,
    about = "A WorkPool's queue: stats, dead letters, retry, submit (with your kubeconfig's rights)"
)]
struct Cli {
    /// The kubeconfig file [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context [default: its current context].
    #[arg(long, global = true)]
    context: Option<String>,
    /// The WorkPool's namespace [default: the context's, else "default"].
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The pool's queue stats (backlog, pending, dead letters, consumers, draining).
    Stats {
        /// The WorkPool.
        pool: String,
        /// Print JSON (as `workpool-worker stats --json`).
        #[arg(long)]
        json: bool,
    },
    /// List the pool's dead letters, oldest first.
    DeadLetters(DeadLettersArgs),
    /// Put dead letters back into the pool's queue, each atomically: --all or by REF.
    Retry(RetryArgs),
    /// Submit tasks to the pool.
    Submit(SubmitArgs),
}

#[derive(Args, Debug)]
struct Filters {
    /// Only this partition.
    #[arg(long)]
    partition: Option<usize>,
    /// Whose error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Of this task id.
    #[arg(long)]
    task_id: Option<String>,
    /// Written by this consumer (pod).
    #[arg(long)]
    consumer: Option<String>,
    /// Delivered at least this many times.
    #[arg(long)]
    min_deliveries: Option<u64>,
}

impl Filters {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            partition: self.partition,
            error_contains: self.error.clone(),
            task_id: self.task_id.clone(),
            consumer: self.consumer.clone(),
            min_deliveries: self.min_deliveries,
            ..DeadLetterFilter::default()
        }
    }
}

#[derive(Args, Debug)]
struct DeadLettersArgs {
    /// The WorkPool.
    pool: String,
    #[command(flatten)]
    filters: Filters,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first.
    #[arg(long)]
    newest_first: bool,
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).multiple(false).args(["all", "refs"])))]
struct RetryArgs {
    /// The WorkPool.
    pool: String,
    /// Every dead letter (matching the filters) that exists when the command starts.
    #[arg(long)]
    all: bool,
    /// Dead letters by reference ([<partition>/]<ms>-<seq>, as `dead-letters` shows them).
    #[arg(value_name = "REF")]
    refs: Vec<String>,
    #[command(flatten)]
    filters: Filters,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The WorkPool.
    pool: String,
    /// The payload (must be valid JSON).
    #[arg(long)]
    payload: String,
    /// How many tasks.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// A task id (with --count 1; with more, `<id>-<n>`).
    #[arg(long)]
    id: Option<String>,
    /// The partition key (CRC16 of it mod the partitions).
    #[arg(long)]
    key: Option<String>,
    /// Deduplicate by task id (needs --id) over this many seconds.
    #[arg(long)]
    dedup_seconds: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A client from the caller's kubeconfig and the namespace to use.
async fn kube_client(cli: &Cli) -> anyhow::Result<(kube::Client, String)> {
    let opts = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts).await
        }
        None => kube::Config::from_kubeconfig(&opts).await,
    }
    .context("loading the kubeconfig")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((
        kube::Client::try_from(config).context("building the Kubernetes client")?,
        ns,
    ))
}

/// The pool's queue: the WorkPool read with the caller's rights, its Redis found as the
/// operator finds it, connected.
async fn open_pool(cli: &Cli, name: &str) -> anyhow::Result<Pool> {
    let (client, ns) = kube_client(cli).await?;
    let pools: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    let wp = match pools.get_opt(name).await {
        Ok(Some(wp)) => wp,
        Ok(None) => bail!("WorkPool {ns}/{name} not found"),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            bail!("you may not read WorkPool {ns}/{name}: {}", s.message)
        }
        Err(e) => return Err(e).with_context(|| format!("reading WorkPool {ns}/{name}")),
    };
    let names = queue_of(&wp).map_err(|e| anyhow::anyhow!("WorkPool {ns}/{name}: {e}"))?;
    let target = QueueTargets::default()
        .target(&client, &wp)
        .await
        .map_err(|e| match e {
            // The operator's wording names itself; here the reader is the caller.
            ProbeError::SecretForbidden { name: secret, message } => anyhow::anyhow!(
                "cannot read the Redis URL of WorkPool {ns}/{name} from its Secret with your credentials: you may not read Secret {secret:?}: {message}"
            ),
            ProbeError::Secret(m) => anyhow::anyhow!(
                "cannot read the Redis URL of WorkPool {ns}/{name} from its Secret: {m}"
            ),
            e => anyhow::anyhow!("WorkPool {ns}/{name}: {e}"),
        })?;
    let names =
        keys_on(names, &target).map_err(|e| anyhow::anyhow!("WorkPool {ns}/{name}: {e}"))?;
    Pool::connect(&target, names.layout().clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the Redis of WorkPool {ns}/{name} ({}): {}",
                target.redacted(),
                ProbeError::from_queue(e)
            )
        })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Stats { pool, json } => {
            let st = open_pool(&cli, pool).await?.stats().await?;
            if *json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&st)?))
            } else {
                emit(&display::stats(&st))
            }
        }
        Command::DeadLetters(a) => {
            let pool = open_pool(&cli, &a.pool).await?;
            let limit = (a.limit > 0).then_some(a.limit);
            let list = pool
                .dead_letters(&a.filters.filter(), limit, a.newest_first)
                .await?;
            if a.json {
                let arr: Vec<serde_json::Value> = list.iter().map(DeadLetter::to_json).collect();
                emit(&format!("{}\n", serde_json::to_string_pretty(&arr)?))
            } else {
                emit(&display::dead_letters(&list))
            }
        }
        Command::Retry(a) => {
            if !a.all && a.filters.filter() != DeadLetterFilter::default() {
                bail!("the filters go with --all, not with references");
            }
            let refs: Vec<DeadLetterRef> = a
                .refs
                .iter()
                .map(|r| r.parse::<DeadLetterRef>())
                .collect::<Result<_, _>>()?;
            let pool = open_pool(&cli, &a.pool).await?;
            let outcomes = if a.all {
                pool.retry_all_dead_letters(&a.filters.filter()).await?
            } else {
                pool.retry_dead_letters(&refs).await?
            };
            if a.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&outcomes)?))?;
            } else {
                let mut out = String::new();
                for o in &outcomes {
                    out += &match o.entry_id {
                        Some(id) => format!("retried {} -> {id}\n", o.reference),
                        None => format!("not there: {} (already retried or purged)\n", o.reference),
                    };
                }
                let done = outcomes.iter().filter(|o| o.entry_id.is_some()).count();
                out += &format!("retried {done}\n");
                emit(&out)?;
            }
            let missing = outcomes.iter().filter(|o| o.entry_id.is_none()).count();
            if missing > 0 && !a.all {
                bail!(
                    "{missing} of {} dead letters were not there",
                    outcomes.len()
                );
            }
            Ok(())
        }
        Command::Submit(a) => {
            serde_json::from_str::<serde_json::Value>(&a.payload)
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
            if a.count == 0 {
                bail!("--count must be at least 1");
            }
            if a.dedup_seconds.is_some() && a.id.is_none() {
                bail!("--dedup-seconds needs --id");
            }
            let tasks: Vec<Task> = (0..a.count)
                .map(|i| {
                    let mut t = Task::new(a.payload.clone());
                    if let Some(id) = &a.id {
                        t = t.with_id(if a.count == 1 {
                            id.clone()
                        } else {
                            format!("{id}-{i}")
                        });
                    }
                    if let Some(k) = &a.key {
                        t = t.with_key(k.as_bytes().to_vec());
                    }
                    if let Some(s) = a.dedup_seconds {
                        t = t.with_dedup(std::time::Duration::from_secs(s.max(1)));
                    }
                    t
                })
                .collect();
            let pool = open_pool(&cli, &a.pool).await?;
            let subs = pool
                .submit_many(tasks, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if a.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&subs)?))
            } else {
                let mut out = String::new();
                for s in &subs {
                    out += &format!(
                        "{} task {} (partition {}, entry {})\n",
                        if s.duplicate {
                            "duplicate of"
                        } else {
                            "submitted"
                        },
                        s.task_id,
                        s.partition,
                        s.entry_id
                    );
                }
                emit(&out)
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
