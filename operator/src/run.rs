//! The `workpool-operator` process: configuration, preflight checks, the HTTP server,
//! leader election, the pod cache and the controller, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{ArgAction, Parser, ValueEnum};
use futures::{SinkExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::controller::{self, Context, ControllerConfig};
use crate::crd::WorkPool;
use crate::health::{self, Health, Readiness};
use crate::hub::QueueHub;
use crate::leader::{LeaderElector, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::planner::BackoffConfig;
use crate::podcache::{CachedPod, PodFeed, PodIndex, RelistDiff, project};
use crate::pods::POOL_LABEL;
use crate::wake::Wake;

/// The annotation where `kubectl apply` keeps the whole object it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the pool cache drops of each pool: never read, and each as large as the spec (the
/// managedFields, and the copy of the whole pool that `kubectl apply` keeps in an
/// annotation). The operator never writes a pool back whole, so nothing is lost.
fn trim_pool(wp: &mut WorkPool) {
    wp.metadata.managed_fields = None;
    if let Some(a) = wp.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Command line of `workpool-operator` (every flag also from the environment). With no
/// arguments it uses the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster
/// service account, watches all namespaces and takes part in leader election.
#[derive(Debug, Clone, Parser)]
#[command(name = "workpool-operator", version, about)]
pub struct Args {
    /// Watch WorkPools in this namespace only (default: all namespaces).
    #[arg(long, env = "WORKPOOL_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "WORKPOOL_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "WORKPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Take part in leader election (only the holder of the Lease acts).
    #[arg(long, env = "WORKPOOL_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "WORKPOOL_LEASE_NAME", default_value = "workpool-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace in a cluster, else the
    /// kubeconfig's namespace).
    #[arg(long, env = "WORKPOOL_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds without renewal after which a standby takes the Lease.
    #[arg(long, env = "WORKPOOL_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds the leader keeps acting without being able to renew.
    #[arg(long, env = "WORKPOOL_LEASE_RENEW_DEADLINE", default_value_t = 10)]
    pub lease_renew_deadline: u64,
    /// Seconds between attempts to acquire or renew the Lease.
    #[arg(long, env = "WORKPOOL_LEASE_RETRY_PERIOD", default_value_t = 2)]
    pub lease_retry_period: u64,
    /// Identity in the Lease and on Events (default: $POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds between queue reads of a pool without autoscaling.
    #[arg(long, env = "WORKPOOL_QUEUE_POLL_INTERVAL", default_value_t = 5)]
    pub queue_poll_interval: u64,
    /// Milliseconds before replacing a pod after the first failure in a row (doubles per failure).
    #[arg(long, env = "WORKPOOL_REPLACEMENT_BACKOFF_MS", default_value_t = 1000)]
    pub replacement_backoff_ms: u64,
    /// Upper bound of the replacement back-off, in seconds.
    #[arg(long, env = "WORKPOOL_REPLACEMENT_BACKOFF_MAX", default_value_t = 300)]
    pub replacement_backoff_max: u64,
    /// Wake autoscaled pools at zero on their first task (one blocking read per Redis)
    /// instead of at the next queue poll.
    #[arg(long, env = "WORKPOOL_WAKE", default_value_t = true, action = ArgAction::Set)]
    pub wake: bool,
    /// Seconds without a pod failure after which the back-off (and Degraded) resets.
    #[arg(
        long,
        env = "WORKPOOL_REPLACEMENT_BACKOFF_RESET",
        default_value_t = 120
    )]
    pub replacement_backoff_reset: u64,
    /// Seconds a deleted pool waits for its pods to go and for Redis to remove its
    /// consumers before it gives up on them (its deletion then completes, with a Warning
    /// Event).
    #[arg(long, env = "WORKPOOL_CLEANUP_TIMEOUT", default_value_t = 300)]
    pub cleanup_timeout: u64,
    /// Seconds a Redis URL read from a Secret is used before the Secret is read again;
    /// when the operator may not watch Secrets (RBAC `get` only), also the period of the
    /// one metadata read per named Secret that finds a rotation (a change reconciles the
    /// pools naming it). With `list` and `watch` a change is followed at once.
    #[arg(long, env = "WORKPOOL_SECRET_REFRESH", default_value_t = 30)]
    pub secret_refresh: u64,
    /// Pools reconciled at once (others wait their turn in the controller's queue, which
    /// merges repeated triggers of one pool). Bounds the API requests in flight, and so
    /// the memory and the API server's queue, when many pools change together.
    #[arg(long, env = "WORKPOOL_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: u16,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "workpool-operator".into());
    format!(
        "{host}_{}_{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

fn lease_namespace(args: &Args, client: &kube::Client) -> String {
    if let Some(ns) = &args.lease_namespace {
        return ns.clone();
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    if let Ok(ns) =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        && !ns.trim().is_empty()
    {
        return ns.trim().to_string();
    }
    client.default_namespace().to_string()
}

/// Checks that the CRD is installed and that RBAC allows what the operator needs, with a
/// message that says what to do.
pub async fn preflight(
    client: &kube::Client,
    namespace: Option<&str>,
    lease: Option<(&str, &str)>,
) -> Result<()> {
    let scope = namespace
        .map(|n| format!(" in namespace {n:?}"))
        .unwrap_or_else(|| " in all namespaces".into());
    let lp = ListParams::default().limit(1);
    let pools: Api<WorkPool> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match pools.list(&lp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => bail!(
            "the WorkPool CRD (workpools.workpool.dev) is not installed in this cluster: \
             apply crds/workpool.yaml (or install the Helm chart) first"
        ),
        Err(kube::Error::Api(s)) if s.code == 403 => bail!(
            "RBAC forbids listing workpools{scope}: {}. Bind the operator's ClusterRole \
             (operator/rbac.yaml) to its service account",
            s.message
        ),
        Err(e) => bail!("cannot reach the Kubernetes API: {e}"),
    }
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match pods.list(&lp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => bail!(
            "RBAC forbids listing pods{scope}: {}. Bind the operator's ClusterRole \
             (operator/rbac.yaml) to its service account",
            s.message
        ),
        Err(e) => bail!("cannot list pods: {e}"),
    }
    if let Some((ns, name)) = lease {
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        match leases.get_opt(name).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => bail!(
                "RBAC forbids reading the leader Lease {ns}/{name}: {}. Grant get/create/update \
                 on coordination.k8s.io leases in {ns:?} (operator/rbac.yaml), or run with \
                 --leader-elect=false",
                s.message
            ),
            Err(e) => bail!("cannot read the leader Lease {ns}/{name}: {e}"),
        }
    }
    Ok(())
}

/// Whether RBAC lets the operator list and watch Secrets in its scope.
async fn may_watch_secrets(client: &kube::Client, namespace: Option<&str>) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for verb in ["list", "watch"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("secrets".into()),
                    namespace: namespace.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        if !allowed {
            return false;
        }
    }
    true
}

/// What of a pool triggers its reconcile: its generation (spec and scale), its
/// finalizers, and whether it is being deleted.
fn spec_finalizers_deletion(wp: &WorkPool) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    wp.metadata.generation.hash(&mut h);
    wp.metadata.finalizers.hash(&mut h);
    wp.metadata.deletion_timestamp.is_some().hash(&mut h);
    wp.metadata.uid.hash(&mut h);
    Some(h.finish())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT (exit 0) or a lost Lease (error).
pub async fn run(args: Args) -> Result<()> {
    init_logging(args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration: set KUBECONFIG or run in a cluster")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_ns = lease_namespace(&args, &client);
    let lease = args
        .leader_elect
        .then_some((lease_ns.as_str(), args.lease_name.as_str()));
    preflight(&client, args.namespace.as_deref(), lease).await?;

    let metrics = Metrics::new().context("registering metrics")?;
    let health = Health::new(metrics.clone());
    let bound = health::serve(args.metrics_addr, health.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    info!(addr = %bound, identity = %identity, namespace = ?args.namespace, "serving /metrics, /healthz, /readyz");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = stop_tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let mut elector: Option<LeaderElector> = None;
    let mut leadership = Leadership::always();
    if args.leader_elect {
        let cfg = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: lease_ns.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration.max(1)),
            renew_deadline: Duration::from_secs(
                args.lease_renew_deadline
                    .clamp(1, args.lease_duration.max(2) - 1),
            ),
            retry_period: Duration::from_secs(args.lease_retry_period.max(1)),
        };
        let el = LeaderElector::new(client.clone(), cfg);
        health.set(Readiness::Standby);
        info!(lease = %format!("{lease_ns}/{}", args.lease_name), "waiting for the leader lease");
        let mut el = el;
        leadership = el.leadership();
        if !el.acquire(Box::pin(stopped(stop_rx.clone()))).await {
            health.set(Readiness::Stopping);
            return Ok(());
        }
        info!("leading");
        elector = Some(el);
    }
    metrics.leader.set(1);

    // The pod cache, synced before the first reconcile.
    let pods_api: Api<CachedPod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pools_api: Api<WorkPool> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (pod_store, pod_writer) = reflector::store();
    let pod_index = PodIndex::new();
    // The feed keeps the store and the index in step and says which pools to reconcile
    // (after a re-list: those whose pods changed while the watch was down).
    let mut feed = PodFeed::new(pod_writer, pod_index.clone());
    let (tx, rx) = futures::channel::mpsc::channel::<CachedPod>(1024);
    let pod_watch = watcher(
        pods_api,
        watcher::Config::default().labels(POOL_LABEL).any_semantic(),
    )
    .default_backoff()
    // Only what a reconcile reads of a pod is parsed and kept (CachedPod, trimmed by
    // `project`): the whole objects made the cache ~45 KiB a pod (457 MiB at 10,000).
    .modify(project);
    tokio::spawn(async move {
        let mut tx = tx;
        let mut s = std::pin::pin!(pod_watch);
        while let Some(item) = s.next().await {
            match item {
                Ok(event) => {
                    for p in feed.follow(&event) {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "pod watch"),
            }
        }
    });
    tokio::select! {
        r = pod_store.wait_until_ready() => r.context("pod cache")?,
        _ = stopped(stop_rx.clone()) => { return Ok(()) }
    }

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "workpool-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    // Secrets named by pools are watched (metadata only) when RBAC allows list and watch
    // (asked with a SelfSubjectAccessReview, not by trying: no forbidden request);
    // otherwise a pool's Secret is read again every --secret-refresh seconds.
    let secrets_watched = may_watch_secrets(&client, args.namespace.as_deref()).await;
    let config = ControllerConfig {
        poll_interval: Duration::from_secs(args.queue_poll_interval.max(1)),
        secret_refresh: Duration::from_secs(args.secret_refresh.max(1)),
        backoff: BackoffConfig {
            base_ms: args.replacement_backoff_ms.max(1),
            max_ms: args.replacement_backoff_max.saturating_mul(1000).max(1),
            reset_after_ms: args.replacement_backoff_reset.saturating_mul(1000),
        },
        cleanup_timeout: Duration::from_secs(args.cleanup_timeout),
        ..ControllerConfig::default()
    };
    let (wake, wakes) = Wake::new(Some(metrics.clone()), args.wake);
    let (hub, reads) = QueueHub::new(Some(metrics.clone()), Duration::from_secs(5));
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            recorder,
            metrics.clone(),
            pod_store,
            hub,
            config,
        )
        .with_wake(wake)
        .with_pod_index(pod_index)
        .with_leadership(leadership),
    );
    // The WorkPool cache, with readiness set on its first complete list. Not by awaiting
    // the controller's `Store::wait_until_ready` in a task of its own: that wakes only
    // one waiter, the controller's runner waits on it too, and the loser waits forever
    // (/readyz stayed 503 on the real node).
    let (pool_store, mut pool_writer) = reflector::store::<WorkPool>();
    let mut on_first_list = Some(health.clone());
    let forgetting = ctx.clone();
    let listed = pool_store.clone();
    // A re-list's pools trigger reconciles at its end, once the store holds them (see
    // `PodFeed`: a reconcile triggered by `InitApply` reads the state before the re-list).
    let mut relist = RelistDiff::<WorkPool>::default();
    let pools = watcher(pools_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim_pool)
        .map_ok(move |event| {
            relist.before(&event, &listed);
            pool_writer.apply_watcher_event(&event);
            let triggers = match event {
                watcher::Event::Apply(wp) => vec![wp],
                watcher::Event::InitDone => {
                    if let Some(health) = on_first_list.take()
                        && health.get() != Readiness::Stopping
                    {
                        health.set(Readiness::Ready);
                        info!("caches synced; ready");
                    }
                    // A pool deleted while the watch was down left no Delete event.
                    forgetting.forget_missing(&listed);
                    let (changed, _vanished) = relist.done(&listed);
                    changed.iter().map(|wp| wp.as_ref().clone()).collect()
                }
                // A pool gone without its cleanup (its finalizer removed by hand) leaves
                // no memory, queue reader, wake registration or metric series behind.
                watcher::Event::Delete(wp) => {
                    forgetting.forget(&crate::decide::key_of(&wp));
                    Vec::new()
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
            };
            futures::stream::iter(triggers.into_iter().map(Ok))
        })
        .try_flatten()
        // Only what the pool's owner changes triggers a reconcile: the spec (generation),
        // the finalizers and the deletion. The operator's own status writes do not (a
        // status that changed with every failed attempt made the controller loop hot).
        .predicate_filter(spec_finalizers_deletion, Default::default());
    let secrets_api: Api<kube::core::PartialObjectMeta<Secret>> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let secret_changes = if secrets_watched {
        controller::secret_triggers(secrets_api, pool_store.clone(), ctx.clone()).boxed()
    } else {
        info!(
            refresh_secs = args.secret_refresh,
            "RBAC grants no list and watch on secrets: each Secret a pool names is read \
             again (its metadata) every --secret-refresh seconds (grant them to follow a \
             rotation at once)"
        );
        controller::secret_polls(
            client.clone(),
            pool_store.clone(),
            ctx.clone(),
            Duration::from_secs(args.secret_refresh.max(1)),
        )
        .boxed()
    };
    let ctrl = kube::runtime::Controller::for_stream(pools, pool_store)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(args.max_concurrent_reconciles.max(1)),
        )
        .owns_stream(rx.map(Ok))
        .reconcile_on(wakes)
        .reconcile_on(reads)
        .reconcile_on(secret_changes);

    // Stop acting on shutdown or when the Lease is lost.
    let (ctrl_stop_tx, ctrl_stop_rx) = watch::channel(false);
    let holder = elector.map(|mut el| {
        let stop_rx = stop_rx.clone();
        let ctrl_stop_tx = ctrl_stop_tx.clone();
        tokio::spawn(async move {
            let kept = el.hold(Box::pin(stopped(stop_rx))).await;
            let _ = ctrl_stop_tx.send(true);
            (el, kept)
        })
    });
    {
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            stopped(stop_rx).await;
            let _ = ctrl_stop_tx.send(true);
        });
    }
    controller::run(ctrl, ctx, stopped(ctrl_stop_rx)).await;
    health.set(Readiness::Stopping);
    metrics.leader.set(0);
    if let Some(h) = holder {
        match h.await {
            Ok((mut el, true)) => el.release().await,
            Ok((_, false)) => {
                error!("lost the leader lease; exiting so that another replica takes over");
                bail!("lost the leader lease");
            }
            Err(e) => bail!("lease task failed: {e}"),
        }
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_cache_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut wp: WorkPool = serde_json::from_value(serde_json::json!({
            "apiVersion": crate::crd::API_VERSION, "kind": crate::crd::KIND,
            "metadata": {
                "name": "p", "namespace": "n",
                "annotations": {LAST_APPLIED: "{\"spec\":{}}", "team": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"queue": {"redis": {"url": "redis://r:6379"}},
                     "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}}},
        }))
        .expect("a WorkPool");
        let spec = wp.spec.clone();
        trim_pool(&mut wp);
        assert!(wp.metadata.managed_fields.is_none());
        let annotations = wp.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
        assert_eq!(wp.spec, spec);
        // Without annotations: nothing to do, and no empty map made up.
        wp.metadata.annotations = None;
        trim_pool(&mut wp);
        assert!(wp.metadata.annotations.is_none());
    }
}
