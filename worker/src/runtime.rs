//! The worker runtime: reads tasks in batches, runs the handler with bounded concurrency,
//! acknowledges in batches, retries, dead-letters, renews leases, reclaims the tasks of
//! dead workers, reconnects to Redis, and drains on shutdown.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::handler::{Handler, TaskError};
use crate::metrics::Health;
use crate::queue::{Entry, EntryId, Pool, Queue, QueueError};
use crate::target::{Connection, Target, Tls};

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Redis URL: standalone, Sentinel or Cluster (see [`crate::target`]).
    pub redis_url: String,
    /// The pool's keys: stream, group, dead-letter stream and partitions (build it with
    /// `with_cluster` matching the URL).
    pub pool: Pool,
    /// Consumer name (unique per worker; the pod name in Kubernetes).
    pub consumer: String,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Entries read per `XREADGROUP`.
    pub batch: usize,
    /// Idle time after which another worker reclaims a task.
    pub visibility_timeout: Duration,
    /// Deliveries before a task goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// First retry delay (doubles per delivery).
    pub retry_backoff: Duration,
    /// Maximum retry delay.
    pub retry_backoff_max: Duration,
    /// Time to finish in-flight tasks after SIGTERM.
    pub shutdown_grace: Duration,
    /// A run taking longer fails (and is retried); `None`: no limit.
    pub task_timeout: Option<Duration>,
    /// TLS material for `rediss` URLs: a CA to verify the servers against instead of the
    /// system's trusted roots, and a client certificate + key (mTLS).
    pub tls: Tls,
}

impl WorkerConfig {
    /// Lease renewal period: a third of the visibility timeout.
    pub fn renew_interval(&self) -> Duration {
        (self.visibility_timeout / 3).max(Duration::from_millis(50))
    }

    /// Reclaim scan period: half the visibility timeout.
    pub fn reclaim_interval(&self) -> Duration {
        (self.visibility_timeout / 2).max(Duration::from_millis(50))
    }

    /// How long one `XREADGROUP` blocks.
    pub fn block(&self) -> Duration {
        self.reclaim_interval()
            .min(Duration::from_secs(2))
            .max(Duration::from_millis(10))
    }

    /// The health ping's period and timeout: a quarter of the visibility timeout, between
    /// 250 ms and 2 s. Redis not answering within it makes `/readyz` 503 and counts as a
    /// Redis outage (see [`WorkerConfig::reclaim_pause`]).
    pub fn ping_timeout(&self) -> Duration {
        (self.visibility_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }

    /// After Redis looked stalled or unreachable, how long this worker waits before it
    /// reclaims other workers' tasks: Redis's idle clocks ran on during the outage, so the
    /// live workers must first renew their leases (each does within half the visibility
    /// timeout: a renewal period plus a capped retry).
    pub fn reclaim_pause(&self) -> Duration {
        self.visibility_timeout * 2 / 3
    }

    /// A reclaim (`XAUTOCLAIM`) that reaches Redis later than this after it was sent is
    /// refused by Redis (it sat in a socket while Redis was stalled).
    pub fn reclaim_max_delay(&self) -> Duration {
        (self.visibility_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }
}

/// Capped exponential backoff for reconnects: 100 ms, 200 ms, ... up to 5 s.
pub fn reconnect_backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(5_000))
}

/// Retry delay before delivery `next_delivery` (>= 2): `base * 2^(next-2)`, capped, with
/// +-20% jitter.
pub fn retry_delay(base: Duration, max: Duration, next_delivery: u32) -> Duration {
    let exp = next_delivery.saturating_sub(2).min(20);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::rng().random_range(0.8..=1.2);
    d.mul_f64(jitter).min(max)
}

/// A lazily (re)connected multiplexed connection. Reconnecting goes through the target
/// again: a Sentinel target asks the sentinels for the primary, a Cluster target reloads
/// the slot map.
struct Conn {
    target: Target,
    response_timeout: Option<Duration>,
    cur: tokio::sync::Mutex<Option<Connection>>,
}

impl Conn {
    fn new(target: Target, response_timeout: Option<Duration>) -> Self {
        Conn {
            target,
            response_timeout,
            cur: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Connection, QueueError> {
        let mut g = self.cur.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = self.target.connect(self.response_timeout).await?;
        *g = Some(c.clone());
        Ok(c)
    }

    async fn reset(&self) {
        *self.cur.lock().await = None;
    }
}

enum Done {
    /// Acknowledge + delete; drop the permits afterwards. `tracked`: remove from the
    /// lease set.
    Ack {
        ids: Vec<EntryId>,
        permit: Option<OwnedSemaphorePermit>,
        tracked: bool,
    },
    /// Hand back (on shutdown) with this delivery count.
    Release(EntryId, u32),
    /// Reply once everything before this message is flushed.
    Flush(oneshot::Sender<()>),
}

/// One partition's worker state; the partitions of a pool share the concurrency slots,
/// the handler, the command connection, the task tracker, the shutdown tokens and what is
/// known about Redis's health and clock.
struct Ctx {
    cfg: WorkerConfig,
    /// This partition's stream, group and dead-letter stream.
    queue: Queue,
    handler: Handler,
    health: Health,
    cmd: Arc<Conn>,
    sem: Arc<Semaphore>,
    inflight: Mutex<HashSet<EntryId>>,
    done_tx: mpsc::UnboundedSender<Done>,
    tracker: TaskTracker,
    /// Stop reading; waiting retries are handed back.
    shutdown: CancellationToken,
    /// Abort running handlers and hand their tasks back.
    hard_stop: CancellationToken,
    /// Give up on Redis for good (end of shutdown).
    abandon: CancellationToken,
    /// When this worker started: entries it holds in Redis that were delivered before are
    /// a former process's (same consumer name), not lost replies.
    started: Instant,
    /// The last time Redis looked stalled or unreachable.
    trouble: Arc<Mutex<Option<Instant>>>,
    /// Redis server time minus local wall-clock time, in ms (from the health ping).
    clock_offset_ms: Arc<AtomicI64>,
    clock_known: Arc<AtomicBool>,
    /// In-flight tasks whose lease was lost (reported once, no longer renewed).
    lease_lost: Mutex<HashSet<EntryId>>,
    /// Shared by the partitions' readers: `stopped` is said only once every one of them
    /// stopped reading.
    drain_gate: Arc<DrainGate>,
}

/// The partitions' readers of one worker and how many of them saw the pool's drain
/// request and stopped reading. The worker answers `stopped` only when all have: a reader
/// still in a blocking read of its partition may yet take a task.
struct DrainGate {
    readers: usize,
    parked: AtomicUsize,
}

impl DrainGate {
    fn new(readers: usize) -> DrainGate {
        DrainGate {
            readers,
            parked: AtomicUsize::new(0),
        }
    }

    fn all_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst) >= self.readers
    }
}

impl Ctx {
    fn queue(&self) -> &Queue {
        &self.queue
    }

    fn consumer(&self) -> &str {
        &self.cfg.consumer
    }

    fn track(&self, id: EntryId) -> bool {
        self.inflight
            .lock()
            .map(|mut s| s.insert(id))
            .unwrap_or(true)
    }

    /// The task is this worker's in the group again (delivered to it once more while it
    /// runs, or re-claimed for a retry): renew its lease again. Without this a task whose
    /// lease was once reported lost (e.g. between an XGROUP DESTROY and its re-delivery
    /// here) was never renewed again, and another worker ran it while it still ran here.
    fn lease_regained(&self, id: EntryId) {
        if let Ok(mut s) = self.lease_lost.lock() {
            s.remove(&id);
        }
    }

    fn is_tracked(&self, id: &EntryId) -> bool {
        self.inflight
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(false)
    }

    /// The task is no longer held by this worker.
    fn forget(&self, id: EntryId) {
        if let Ok(mut s) = self.inflight.lock() {
            s.remove(&id);
        }
        if let Ok(mut s) = self.lease_lost.lock() {
            s.remove(&id);
        }
        self.health.metrics.in_flight.dec();
    }

    /// Redis looked stalled or unreachable just now.
    fn mark_trouble(&self) {
        if let Ok(mut t) = self.trouble.lock() {
            *t = Some(Instant::now());
        }
    }

    /// Whether reclaiming other workers' tasks is safe now (see
    /// [`WorkerConfig::reclaim_pause`]).
    fn reclaim_allowed(&self) -> bool {
        match self.trouble.lock().ok().and_then(|t| *t) {
            Some(t) => t.elapsed() >= self.cfg.reclaim_pause(),
            None => true,
        }
    }

    /// The latest Redis time at which a reclaim sent now may still run, when the offset of
    /// Redis's clock is known.
    fn reclaim_deadline_ms(&self) -> Option<u64> {
        if !self.clock_known.load(Ordering::Relaxed) {
            return None;
        }
        let local = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_millis() as i64;
        let d = local
            + self.clock_offset_ms.load(Ordering::Relaxed)
            + self.cfg.reclaim_max_delay().as_millis() as i64;
        u64::try_from(d).ok()
    }

    /// Concurrency slots for a task: one, or all of them for a task that runs alone.
    /// `None` when shutting down first.
    async fn slots(&self, solo: bool) -> Option<OwnedSemaphorePermit> {
        let n = if solo {
            u32::try_from(self.cfg.concurrency.max(1)).unwrap_or(u32::MAX)
        } else {
            1
        };
        tokio::select! {
            p = self.sem.clone().acquire_many_owned(n) => p.ok(),
            _ = self.shutdown.cancelled() => None,
        }
    }

    fn send(&self, d: Done) {
        if self.done_tx.send(d).is_err() {
            error!("acknowledger stopped early; a task stays pending and will be reclaimed");
        }
    }

    /// Runs a Redis operation on the command connection, retrying connection errors with
    /// capped exponential backoff until `stop` is cancelled (then `None`). Other errors are
    /// returned at once.
    async fn with_redis<T, F, Fut>(
        &self,
        what: &str,
        stop: &CancellationToken,
        f: F,
    ) -> Option<Result<T, QueueError>>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let mut attempt = 0u32;
        loop {
            let r = match self.cmd.get().await {
                Ok(c) => f(c).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Some(Ok(v)),
                Err(e) if e.is_connection_error() => {
                    attempt += 1;
                    self.health.metrics.redis_errors.inc();
                    // The reader may be idle (all slots busy): readiness must drop here too.
                    self.health.set_ready(false);
                    self.mark_trouble();
                    self.cmd.reset().await;
                    // Capped so that leases are renewed soon after Redis is back.
                    let d = reconnect_backoff(attempt).min(self.cfg.renew_interval() / 2);
                    warn!(error = %e, attempt, retry_in_ms = d.as_millis() as u64, "{what}: redis unavailable, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
                Err(e) => {
                    self.health.metrics.redis_errors.inc();
                    return Some(Err(e));
                }
            }
        }
    }

    /// Moves a task to the dead-letter stream (atomically with its ack + delete). A write
    /// that Redis refuses (e.g. the dead-letter key holds another type) is retried with
    /// backoff while the task stays held here (its lease renewed); on shutdown it is
    /// handed back.
    async fn dead_letter(&self, entry: &Entry, reason: &str) {
        let mut attempt = 0u32;
        loop {
            let r = self
                .with_redis("dead-letter", &self.abandon, |mut c| async move {
                    self.queue()
                        .dead_letter(&mut c, entry, self.consumer(), reason)
                        .await
                })
                .await;
            match r {
                Some(Ok(Some(dl))) => {
                    self.health.metrics.dead_lettered.inc();
                    warn!(task = %entry.id, deliveries = entry.deliveries, dead_letter_id = %dl,
                        stream = self.queue().dead_letter_stream(), error = reason, "task moved to the dead-letter stream");
                }
                Some(Ok(None)) => {
                    info!(task = %entry.id, "task no longer held by this worker (already dead-lettered by an earlier try of this command, acknowledged, or reclaimed by another worker); no dead letter written");
                }
                Some(Err(e @ QueueError::NoGroup { .. })) => {
                    warn!(task = %entry.id, error = %e, "cannot dead-letter: the consumer group is gone; the task will be delivered again by the recreated group");
                }
                Some(Err(e)) => {
                    attempt += 1;
                    let d = reconnect_backoff(attempt + 3);
                    error!(task = %entry.id, error = %e, attempt, retry_in_ms = d.as_millis() as u64,
                        stream = self.queue().dead_letter_stream(),
                        "cannot write the dead-letter entry; the task stays pending and held here, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => continue,
                        _ = self.shutdown.cancelled() => {
                            self.release_later(entry.id, entry.deliveries);
                            return;
                        }
                    }
                }
                None => {
                    warn!(task = %entry.id, "shutting down while redis is unavailable; the task stays pending and will be reclaimed");
                }
            }
            break;
        }
        self.forget(entry.id);
    }

    fn release_later(&self, id: EntryId, deliveries: u32) {
        self.send(Done::Release(id, deliveries));
    }
}

async fn run_with_timeout(ctx: &Ctx, entry: &Entry) -> Result<(), TaskError> {
    match ctx.cfg.task_timeout {
        None => ctx.handler.run(entry).await,
        Some(t) => match tokio::time::timeout(t, ctx.handler.run(entry)).await {
            Ok(r) => r,
            Err(_) => Err(TaskError::Retryable(format!(
                "timed out after {:.3}s (--task-timeout)",
                t.as_secs_f64()
            ))),
        },
    }
}

/// Runs one task to completion: retries in place with backoff (the delivery counter in
/// Redis is kept equal to the number of runs), dead-letters when exhausted, malformed or
/// failed permanently. A `solo` task (back from a consumer that died or stalled holding
/// it) runs alone: it waits for every concurrency slot, so if it kills the worker, the
/// tasks that die with it are none, and only it accumulates deliveries.
async fn process(ctx: Arc<Ctx>, mut entry: Entry, permit: OwnedSemaphorePermit, solo: bool) {
    let all = ctx.cfg.concurrency.max(1);
    let mut permit = Some(permit);
    if solo && permit.as_ref().map_or(0, |p| p.num_permits()) < all {
        drop(permit.take());
        debug!(task = %entry.id, deliveries = entry.deliveries, "task back from a dead or stalled worker: waiting to run it alone");
        match ctx.slots(true).await {
            Some(p) => permit = Some(p),
            None => {
                ctx.release_later(entry.id, entry.deliveries.saturating_sub(1));
                return;
            }
        }
    }
    let max = ctx.cfg.max_deliveries;
    loop {
        let start = Instant::now();
        let res = tokio::select! {
            biased;
            _ = ctx.hard_stop.cancelled() => {
                warn!(task = %entry.id, "grace period over: aborting the task and handing it back");
                ctx.release_later(entry.id, entry.deliveries);
                return;
            }
            r = run_with_timeout(&ctx, &entry) => r,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let err = match res {
            Ok(()) => {
                ctx.health.metrics.duration_ok.observe(elapsed);
                ctx.health.metrics.succeeded.inc();
                debug!(task = %entry.id, "task succeeded");
                ctx.send(Done::Ack {
                    ids: vec![entry.id],
                    permit: permit.take(),
                    tracked: true,
                });
                return;
            }
            Err(e) => e,
        };
        ctx.health.metrics.duration_failed.observe(elapsed);
        ctx.health.metrics.failed.inc();
        let delay = match &err {
            TaskError::Malformed(_) | TaskError::Permanent(_) => {
                ctx.dead_letter(&entry, &err.to_string()).await;
                return;
            }
            TaskError::Retryable(msg) if entry.deliveries >= max => {
                let reason = format!(
                    "failed {} times (maxDeliveries {max}); last error: {msg}",
                    entry.deliveries
                );
                ctx.dead_letter(&entry, &reason).await;
                return;
            }
            TaskError::Retryable(msg) => {
                let delay = retry_delay(
                    ctx.cfg.retry_backoff,
                    ctx.cfg.retry_backoff_max,
                    entry.deliveries + 1,
                );
                ctx.health.metrics.retried.inc();
                warn!(task = %entry.id, deliveries = entry.deliveries, retry_in_ms = delay.as_millis() as u64, error = %msg, "task failed; will retry");
                delay
            }
        };
        // Wait without holding a concurrency slot.
        drop(permit.take());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.shutdown.cancelled() => {
                ctx.release_later(entry.id, entry.deliveries);
                return;
            }
        }
        let Some(p) = ctx.slots(solo).await else {
            ctx.release_later(entry.id, entry.deliveries);
            return;
        };
        permit = Some(p);
        let next = entry.deliveries + 1;
        let id = entry.id;
        let r = ctx
            .with_redis("retry", &ctx.hard_stop, |mut c| {
                let ctx = &ctx;
                async move {
                    ctx.queue()
                        .claim_for_retry(&mut c, ctx.consumer(), id, next)
                        .await
                }
            })
            .await;
        match r {
            Some(Ok(true)) => {
                entry.deliveries = next;
                ctx.lease_regained(entry.id);
            }
            Some(Ok(false)) => {
                warn!(task = %entry.id, "task no longer held by this worker (reclaimed by another or deleted); not retrying here");
                ctx.forget(entry.id);
                return;
            }
            Some(Err(e)) => {
                error!(task = %entry.id, error = %e, "cannot record the retry; leaving the task pending to be reclaimed");
                ctx.forget(entry.id);
                return;
            }
            None => {
                ctx.forget(entry.id);
                return;
            }
        }
    }
}

/// Sends acks and hand-backs to Redis in batches.
async fn acknowledger(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<Done>) {
    let mut msgs = Vec::with_capacity(1024);
    let mut ids: Vec<EntryId> = Vec::with_capacity(4096);
    let mut tracked: Vec<EntryId> = Vec::new();
    let mut permits = Vec::new();
    let mut releases: Vec<(EntryId, u32)> = Vec::new();
    let mut flushes = Vec::new();
    while rx.recv_many(&mut msgs, 1024).await > 0 {
        for m in msgs.drain(..) {
            match m {
                Done::Ack {
                    ids: mut i,
                    permit,
                    tracked: t,
                } => {
                    if t {
                        tracked.extend_from_slice(&i);
                    }
                    ids.append(&mut i);
                    permits.extend(permit);
                }
                Done::Release(id, d) => releases.push((id, d)),
                Done::Flush(tx) => flushes.push(tx),
            }
        }
        if !ids.is_empty() {
            // Retried until it succeeds (or the worker gives up at the end of shutdown):
            // a finished task must not stay pending, where it would run again.
            let mut attempt = 0u32;
            loop {
                let r = ctx
                    .with_redis("ack", &ctx.abandon, |mut c| {
                        let ids = &ids;
                        let ctx = &ctx;
                        async move { ctx.queue().ack(&mut c, ids).await }
                    })
                    .await;
                match r {
                    Some(Ok(())) => break,
                    Some(Err(e)) => {
                        attempt += 1;
                        let d = reconnect_backoff(attempt + 2);
                        error!(error = %e, count = ids.len(), attempt, retry_in_ms = d.as_millis() as u64, "acknowledging failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = ctx.abandon.cancelled() => {
                                warn!(count = ids.len(), "gave up acknowledging (shutting down); those tasks stay pending and will be reclaimed");
                                break;
                            }
                        }
                    }
                    None => {
                        warn!(
                            count = ids.len(),
                            "gave up acknowledging (shutting down, redis unavailable); those tasks stay pending and will be reclaimed"
                        );
                        break;
                    }
                }
            }
            ctx.health.metrics.in_flight.sub(ids.len() as i64);
            if !tracked.is_empty() {
                if let Ok(mut s) = ctx.inflight.lock() {
                    for id in &tracked {
                        s.remove(id);
                    }
                }
                if let Ok(mut s) = ctx.lease_lost.lock()
                    && !s.is_empty()
                {
                    for id in &tracked {
                        s.remove(id);
                    }
                }
            }
            ids.clear();
            tracked.clear();
            permits.clear();
        }
        if !releases.is_empty() {
            let r = ctx
                .with_redis("hand back", &ctx.abandon, |mut c| {
                    let rel = &releases;
                    let ctx = &ctx;
                    async move { ctx.queue().release(&mut c, ctx.consumer(), rel).await }
                })
                .await;
            match r {
                Some(Ok(n)) => {
                    ctx.health.metrics.released.inc_by(n);
                    info!(count = n, "handed tasks back for immediate reclaim");
                }
                Some(Err(e)) => {
                    error!(error = %e, "handing back failed; those tasks will be reclaimed after the visibility timeout")
                }
                None => {
                    warn!(
                        "gave up handing back (redis unavailable); those tasks will be reclaimed after the visibility timeout"
                    )
                }
            }
            for (id, _) in releases.drain(..) {
                ctx.forget(id);
            }
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// Renews the lease on held tasks every third of the visibility timeout.
async fn renewer(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = ctx.cfg.renew_interval();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let lost_already: HashSet<EntryId> = match ctx.lease_lost.lock() {
            Ok(s) => s.clone(),
            Err(_) => HashSet::new(),
        };
        let ids: Vec<EntryId> = match ctx.inflight.lock() {
            Ok(s) => s
                .iter()
                .copied()
                .filter(|id| !lost_already.contains(id))
                .collect(),
            Err(_) => continue,
        };
        if ids.is_empty() {
            continue;
        }
        let r = ctx
            .with_redis("lease renewal", &stop, |mut c| {
                let ids = &ids;
                let ctx = &ctx;
                async move { ctx.queue().renew(&mut c, ctx.consumer(), ids).await }
            })
            .await;
        match r {
            Some(Ok(lost)) => {
                debug!(count = ids.len(), lost = lost.len(), "renewed leases");
                for id in lost {
                    // Reported once per task; it is not renewed again.
                    if ctx.is_tracked(&id)
                        && let Ok(mut s) = ctx.lease_lost.lock()
                        && s.insert(id)
                    {
                        warn!(task = %id, "lease lost: the task was reclaimed by another worker or deleted; it may run twice");
                    }
                }
            }
            Some(Err(e)) => warn!(error = %e, "lease renewal failed"),
            None => return,
        }
    }
}

/// Pings Redis (`TIME`) with a short timeout: readiness follows it, a slow or failed
/// ping counts as a Redis outage (reclaims pause), and the answer gives the offset of
/// Redis's clock for reclaim deadlines.
async fn pinger(ctx: Arc<Ctx>, target: Target, stop: CancellationToken) {
    let timeout = ctx.cfg.ping_timeout();
    let conn = Conn::new(target, Some(timeout));
    let mut failures = 0u32;
    loop {
        let sent = Instant::now();
        let wall = SystemTime::now();
        let r = tokio::time::timeout(timeout, async {
            let mut c = conn.get().await?;
            let t: (i64, i64) = redis::cmd("TIME")
                .query_async(&mut c)
                .await
                .map_err(QueueError::from)?;
            Ok::<_, QueueError>(t)
        })
        .await;
        let rtt = sent.elapsed();
        match r {
            Ok(Ok((secs, micros))) if rtt < timeout => {
                if failures > 0 {
                    info!(
                        failed_pings = failures,
                        "redis answers the health ping again"
                    );
                }
                failures = 0;
                ctx.health.set_redis_ok(true);
                if let Ok(local) = wall.duration_since(SystemTime::UNIX_EPOCH) {
                    let local_ms = local.as_millis() as i64 + (rtt.as_millis() as i64) / 2;
                    let redis_ms = secs * 1000 + micros / 1000;
                    ctx.clock_offset_ms
                        .store(redis_ms - local_ms, Ordering::Relaxed);
                    ctx.clock_known.store(true, Ordering::Relaxed);
                }
            }
            other => {
                failures += 1;
                ctx.mark_trouble();
                ctx.health.set_redis_ok(false);
                if failures == 1 {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {} ms", timeout.as_millis()),
                    };
                    warn!(error, "redis does not answer the health ping: not ready");
                }
                conn.reset().await;
            }
        }
        let wait = timeout
            .saturating_sub(sent.elapsed())
            .max(Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

struct Reader {
    ctx: Arc<Ctx>,
    conn: Conn,
    connected: bool,
    ever_connected: bool,
    attempt: u32,
    cursor: EntryId,
    next_reclaim: Instant,
    /// When to look for entries this consumer holds in Redis but lost track of.
    next_take_back: Instant,
    /// The connection broke since the last successful connect.
    lost_connection: bool,
    /// One of several partitions: blocking reads hold no concurrency slot.
    partitioned: bool,
    /// When to look at the drain hash again (at most every [`DRAIN_CHECK_INTERVAL`]
    /// while taking tasks).
    next_drain_check: Instant,
    /// The drain hash could not be read as a hash; said once.
    drain_warned: bool,
    /// This reader saw the drain request and reads no more until it is taken back
    /// (counted in [`DrainGate`]).
    parked: bool,
}

/// How often a worker that takes tasks looks at the pool's drain hash (one `HGET`); it
/// also looks before every read that follows a wait.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a draining worker looks whether the drain was taken back.
const DRAIN_POLL: Duration = Duration::from_millis(500);

impl Reader {
    /// Starts work on entries; each takes one permit from `permit`.
    fn dispatch(&self, entries: Vec<Entry>, permit: &mut OwnedSemaphorePermit) {
        let ctx = &self.ctx;
        let max = ctx.cfg.max_deliveries;
        let inline = ctx.handler.is_inline();
        let mut ok_ids = Vec::new();
        let mut ok_permit: Option<OwnedSemaphorePermit> = None;
        // Track the whole batch under one lock (this is the hot path of short tasks).
        let fresh: Vec<bool> = match ctx.inflight.lock() {
            Ok(mut set) => entries.iter().map(|e| set.insert(e.id)).collect(),
            Err(_) => vec![true; entries.len()],
        };
        ctx.health
            .metrics
            .in_flight
            .add(fresh.iter().filter(|f| **f).count() as i64);
        for (e, fresh) in entries.into_iter().zip(fresh) {
            if !fresh {
                // Delivered again while it runs here: the group was deleted and recreated
                // (or Redis lost its data) and redelivers everything. It is pending for us
                // in the new group; the run under way acknowledges it.
                debug!(task = %e.id, "task delivered again while it runs here; not starting it twice");
                ctx.lease_regained(e.id);
                continue;
            }
            let Some(p) = permit.split(1) else {
                // Not expected: we never read more entries than we hold permits for.
                error!(task = %e.id, "no concurrency slot for a read task; it stays pending and will be reclaimed");
                ctx.forget(e.id);
                continue;
            };
            if e.deliveries > max {
                let ctx2 = ctx.clone();
                ctx.tracker.spawn(async move {
                    let reason = format!(
                        "delivered {} times without completing (maxDeliveries {max}): its worker died or stalled past the visibility timeout each time",
                        e.deliveries
                    );
                    ctx2.dead_letter(&e, &reason).await;
                    drop(p);
                });
                continue;
            }
            if inline {
                let start = Instant::now();
                if let Some(Ok(())) = ctx.handler.run_inline(&e) {
                    ctx.health
                        .metrics
                        .duration_ok
                        .observe(start.elapsed().as_secs_f64());
                    ctx.health.metrics.succeeded.inc();
                    if ok_ids.is_empty() {
                        ok_ids.reserve(permit.num_permits() + 1);
                    }
                    ok_ids.push(e.id);
                    // The slot is kept until the ack is done (back-pressure).
                    match ok_permit.as_mut() {
                        Some(op) => op.merge(p),
                        None => ok_permit = Some(p),
                    }
                    continue;
                }
            }
            let ctx2 = ctx.clone();
            ctx.tracker
                .spawn(async move { process(ctx2, e, p, false).await });
        }
        if !ok_ids.is_empty() {
            ctx.send(Done::Ack {
                ids: ok_ids,
                permit: ok_permit,
                tracked: true,
            });
        }
    }

    /// Connection or command failure: not ready, reconnect later.
    async fn failed(&mut self, what: &str, e: QueueError) {
        let ctx = &self.ctx;
        ctx.health.metrics.redis_errors.inc();
        ctx.health.set_ready(false);
        if e.is_connection_error() {
            if self.connected {
                warn!(error = %e, "{what} failed: lost redis; reconnecting");
            }
            ctx.mark_trouble();
            self.connected = false;
            self.lost_connection = true;
            self.conn.reset().await;
        } else if matches!(e, QueueError::NoGroup { .. }) {
            if self.connected {
                warn!(
                    stream = ctx.queue().stream(),
                    group = ctx.queue().group(),
                    "{what} failed: the consumer group is gone (deleted with XGROUP DESTROY or the stream was deleted); recreating it"
                );
            }
            self.connected = false;
        } else {
            // A command error that is not about the connection (e.g. the key holds another
            // type): not reading, so not ready; back off a little.
            if e.is_wrong_type() {
                error!(error = %e, stream = ctx.queue().stream(), "{what} failed: the stream key holds another type of value, not a stream; waiting until it is a stream or deleted");
            } else {
                error!(error = %e, "{what} failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = ctx.shutdown.cancelled() => {}
            }
        }
    }

    /// (Re)connects and makes sure the group exists; logs one line per failed attempt.
    async fn connect(&mut self) -> bool {
        let ctx = self.ctx.clone();
        let r = async {
            let mut c = self.conn.get().await?;
            ctx.queue().ensure_group_created(&mut c).await
        }
        .await;
        match r {
            Ok(created) => {
                if created && self.ever_connected {
                    warn!(
                        stream = ctx.queue().stream(),
                        group = ctx.queue().group(),
                        "the consumer group was gone and has been recreated at id 0: unacknowledged tasks are delivered again (tasks running here are not started twice)"
                    );
                } else if created {
                    info!(
                        stream = ctx.queue().stream(),
                        group = ctx.queue().group(),
                        "created the consumer group at id 0"
                    );
                }
                if self.ever_connected {
                    if self.lost_connection {
                        info!(attempts = self.attempt + 1, "reconnected to redis");
                    }
                } else {
                    info!(
                        stream = ctx.queue().stream(),
                        group = ctx.queue().group(),
                        consumer = ctx.consumer(),
                        "connected to redis"
                    );
                }
                self.attempt = 0;
                self.lost_connection = false;
                self.connected = true;
                self.ever_connected = true;
                // Right after (re)connecting, look for tasks left by dead workers and for
                // deliveries whose reply was lost.
                self.next_reclaim = Instant::now();
                self.next_take_back = Instant::now();
                true
            }
            Err(e) if !e.is_connection_error() => {
                ctx.health.set_ready(false);
                ctx.health.metrics.redis_errors.inc();
                self.attempt += 1;
                let d = reconnect_backoff(self.attempt);
                if e.is_wrong_type() {
                    error!(attempt = self.attempt, retry_in_ms = d.as_millis() as u64, error = %e, stream = ctx.queue().stream(),
                        "cannot create the consumer group: the stream key holds another type of value, not a stream; waiting until it is a stream or deleted");
                } else {
                    error!(attempt = self.attempt, retry_in_ms = d.as_millis() as u64, error = %e, "cannot create the consumer group");
                }
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = ctx.shutdown.cancelled() => {}
                }
                false
            }
            Err(e) => {
                ctx.health.set_ready(false);
                ctx.health.metrics.redis_errors.inc();
                ctx.mark_trouble();
                self.lost_connection = true;
                self.conn.reset().await;
                self.attempt += 1;
                let d = reconnect_backoff(self.attempt);
                warn!(attempt = self.attempt, retry_in_ms = d.as_millis() as u64, error = %e, url = %redacted(&ctx.cfg.redis_url), stream = ctx.queue().stream(), "cannot connect to redis");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = ctx.shutdown.cancelled() => {}
                }
                false
            }
        }
    }

    /// Entries this consumer holds in Redis that this process is not working on and that
    /// were delivered after it started: deliveries whose reply was lost (the connection
    /// dropped after Redis ran the read or claim). They are taken back without counting a
    /// delivery, so they run now instead of waiting a visibility timeout and coming back
    /// as failed deliveries. (Entries held since before this process started belong to a
    /// former process of the same name that died with them: they are reclaimed after the
    /// visibility timeout like any dead worker's.)
    async fn take_back(&mut self, permit: &mut OwnedSemaphorePermit) -> Result<(), QueueError> {
        let ctx = self.ctx.clone();
        let mut c = self.conn.get().await?;
        let uptime_ms = ctx.started.elapsed().as_millis() as u64;
        let mut after = None;
        let mut lost = Vec::new();
        loop {
            let page = ctx
                .queue()
                .pending_of(&mut c, ctx.consumer(), after, 500)
                .await?;
            let full = page.len() >= 500;
            after = page.last().map(|p| p.id);
            for p in page {
                if p.idle_ms < uptime_ms && !ctx.is_tracked(&p.id) {
                    lost.push(p.id);
                }
            }
            if !full || lost.len() >= permit.num_permits() {
                break;
            }
        }
        lost.truncate(permit.num_permits());
        if lost.is_empty() {
            return Ok(());
        }
        let (entries, deleted) = ctx.queue().take_back(&mut c, ctx.consumer(), &lost).await?;
        if !deleted.is_empty() {
            ctx.queue().ack(&mut c, &deleted).await?;
        }
        if !entries.is_empty() {
            info!(
                count = entries.len(),
                "took back tasks delivered to this worker whose delivery reply was lost"
            );
            self.dispatch(entries, permit);
        }
        Ok(())
    }

    /// One reclaim pass over entries idle past the visibility timeout (their consumer died
    /// or stalled). Entries over `maxDeliveries` are dead-lettered; entries handed back
    /// unstarted (delivery count 0) are taken up to the free slots; any other entry is
    /// *suspect* (it may be what killed its worker) and runs alone: one per pass, claimed
    /// only once this worker has drained (holds every slot), so that neither it nor
    /// anything else is charged a delivery for another task's crash. Returns true when
    /// shutting down.
    async fn reclaim(&mut self, permit: &mut OwnedSemaphorePermit) -> Result<bool, QueueError> {
        let ctx = self.ctx.clone();
        let max = ctx.cfg.max_deliveries;
        let vis = ctx.cfg.visibility_timeout;
        let mut c = self.conn.get().await?;
        let want = permit.num_permits().max(1);
        let page = ctx
            .queue()
            .pending_idle(&mut c, vis, self.cursor_opt(), want.max(16))
            .await?;
        if page.len() < want.max(16) {
            self.cursor = EntryId::ZERO;
            self.next_reclaim = Instant::now() + ctx.cfg.reclaim_interval();
        } else if let Some(last) = page.last() {
            self.cursor = last.id;
        }
        let mut plain = Vec::new();
        let mut suspect = None;
        for p in page {
            // Our own task whose lease ran out while it still runs here.
            if ctx.is_tracked(&p.id) {
                continue;
            }
            if p.deliveries >= max || p.deliveries == 0 {
                if plain.len() < permit.num_permits() {
                    plain.push(p.id);
                }
            } else if suspect.is_none() {
                suspect = Some(p.id);
            }
        }
        let mut claimed = Vec::new();
        if !plain.is_empty() {
            match ctx
                .queue()
                .claim_idle(
                    &mut c,
                    ctx.consumer(),
                    vis,
                    &plain,
                    ctx.reclaim_deadline_ms(),
                )
                .await?
            {
                Some(ac) => {
                    if !ac.deleted.is_empty() {
                        info!(
                            count = ac.deleted.len(),
                            "dropped pending ids whose entries were deleted from the stream"
                        );
                    }
                    claimed.extend(ac.entries);
                }
                None => {
                    self.late_reclaim();
                    return Ok(false);
                }
            }
        }
        if !claimed.is_empty() {
            ctx.health.metrics.reclaimed.inc_by(claimed.len() as u64);
            info!(
                count = claimed.len(),
                "reclaimed tasks idle past the visibility timeout (over maxDeliveries, or handed back unstarted)"
            );
            if ctx.shutdown.is_cancelled() {
                self.hand_back(claimed, 1);
                return Ok(true);
            }
            self.dispatch(claimed, permit);
        }
        let Some(id) = suspect else {
            return Ok(false);
        };
        // Drain: take every slot (running tasks finish, nothing new starts), then claim it.
        // The slots held so far are given back first and all are asked for at once: the
        // semaphore is fair, and holding some while waiting for the rest would deadlock
        // with a task waiting for all of them to retry alone.
        let all = ctx.cfg.concurrency.max(1);
        if permit.num_permits() < all {
            debug!(task = %id, "a task back from a dead or stalled worker: draining to run it alone");
            drop(permit.split(permit.num_permits()));
            let Some(p) = ctx.slots(true).await else {
                return Ok(true);
            };
            permit.merge(p);
        }
        match ctx
            .queue()
            .claim_idle(
                &mut c,
                ctx.consumer(),
                vis,
                &[id],
                ctx.reclaim_deadline_ms(),
            )
            .await?
        {
            Some(ac) => {
                if ac.entries.is_empty() {
                    // Another worker took it, or it was renewed, acknowledged or deleted.
                    return Ok(false);
                }
                ctx.health.metrics.reclaimed.inc_by(ac.entries.len() as u64);
                info!(
                    task = %id,
                    deliveries = ac.entries[0].deliveries,
                    "reclaimed a task idle past the visibility timeout; running it alone (its worker may have died of it)"
                );
                if ctx.shutdown.is_cancelled() {
                    self.hand_back(ac.entries, 1);
                    return Ok(true);
                }
                // Look for the next one as soon as this one is done (the reader waits for
                // a slot until then).
                self.next_reclaim = Instant::now();
                // The solo task gets every slot we hold.
                let mut entries = ac.entries;
                entries.truncate(1);
                self.dispatch_solo(entries, permit);
            }
            None => self.late_reclaim(),
        }
        Ok(false)
    }

    fn cursor_opt(&self) -> Option<EntryId> {
        (self.cursor != EntryId::ZERO).then_some(self.cursor)
    }

    fn late_reclaim(&mut self) {
        warn!(
            "a reclaim reached redis late (redis was stalled); it claimed nothing, trying again later"
        );
        self.ctx.mark_trouble();
        self.cursor = EntryId::ZERO;
    }

    /// Starts one suspect task with all the slots of `permit`.
    fn dispatch_solo(&self, entries: Vec<Entry>, permit: &mut OwnedSemaphorePermit) {
        let ctx = &self.ctx;
        for e in entries {
            let n = permit.num_permits();
            let Some(p) = permit.split(n) else { continue };
            if !ctx.track(e.id) {
                // Running here already (the group was recreated and delivered it again):
                // not started twice, and its lease is ours again.
                ctx.lease_regained(e.id);
                continue;
            }
            ctx.health.metrics.in_flight.inc();
            let ctx2 = ctx.clone();
            ctx.tracker
                .spawn(async move { process(ctx2, e, p, true).await });
        }
    }

    /// Looks at this consumer's field in the pool's drain hash (at most every
    /// [`DRAIN_CHECK_INTERVAL`] while taking tasks). While it is there the worker takes no
    /// task (no read, no reclaim) and keeps running and renewing what it holds: it says so
    /// (`/readyz` 503 "draining", the draining gauge, `stopped` in the hash once), waits
    /// [`DRAIN_POLL`] and returns true. When the field is gone it takes tasks again.
    async fn drained(&mut self) -> bool {
        let ctx = self.ctx.clone();
        // A parked reader looks every time: another reader may have seen the drain
        // taken back first (and said so), and this one must not wait to read again.
        let draining = ctx.health.is_draining() || self.parked;
        if !draining && Instant::now() < self.next_drain_check {
            return false;
        }
        self.next_drain_check = Instant::now() + DRAIN_CHECK_INTERVAL;
        let state = match self.conn.get().await {
            Ok(mut c) => ctx.queue().drain_state(&mut c, ctx.consumer()).await,
            Err(e) => Err(e),
        };
        let state = match state {
            Ok(s) => s,
            Err(e) if e.is_connection_error() => {
                self.failed("drain check", e).await;
                return true;
            }
            Err(e) => {
                // Someone else's key under the drain hash's name must not stop the pool.
                if !self.drain_warned {
                    self.drain_warned = true;
                    warn!(error = %e, key = %ctx.queue().drain_key(), "cannot read the drain hash; taking tasks as usual");
                }
                return false;
            }
        };
        let Some(state) = state else {
            if self.parked {
                self.parked = false;
                ctx.drain_gate.parked.fetch_sub(1, Ordering::SeqCst);
            }
            if ctx.health.is_draining() {
                info!("drain taken back: taking tasks again");
                ctx.health.set_draining(false);
            }
            return false;
        };
        if !self.parked {
            self.parked = true;
            ctx.drain_gate.parked.fetch_add(1, Ordering::SeqCst);
        }
        if !draining {
            info!(
                in_flight = ctx.health.metrics.in_flight.get(),
                "told to stop taking tasks (drain): finishing the tasks held"
            );
            ctx.health.set_draining(true);
        }
        // Every partition's reader must have stopped before the worker says `stopped`:
        // the operator deletes a pod it sees stopped and holding nothing.
        if state == crate::queue::DrainState::Requested && ctx.drain_gate.all_parked() {
            let ack = match self.conn.get().await {
                Ok(mut c) => ctx.queue().acknowledge_drain(&mut c, ctx.consumer()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = ack {
                self.failed("drain acknowledgement", e).await;
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = ctx.shutdown.cancelled() => {}
        }
        true
    }

    async fn run(mut self) {
        let ctx = self.ctx.clone();
        let batch = ctx.cfg.batch.max(1);
        let block = ctx.cfg.block();
        loop {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            if !self.connected && !self.connect().await {
                continue;
            }
            if self.drained().await {
                continue;
            }
            // Wait for at least one free slot, then take up to a batch. The wait is cut
            // now and then to look at the drain hash: a worker whose slots are all busy
            // must still notice a drain (and say it stopped) before its tasks end.
            let first = tokio::select! {
                p = ctx.sem.clone().acquire_many_owned(1) => p,
                _ = ctx.shutdown.cancelled() => break,
                _ = tokio::time::sleep(DRAIN_POLL) => continue,
            };
            let Ok(mut permit) = first else { break };
            let extra = ctx.sem.available_permits().min(batch - 1);
            if extra > 0
                && let Ok(p) = ctx.sem.clone().try_acquire_many_owned(extra as u32)
            {
                permit.merge(p);
            }
            if ctx.shutdown.is_cancelled() {
                break;
            }
            // Deliveries whose reply was lost: after each reconnect, and now and then.
            if Instant::now() >= self.next_take_back {
                self.next_take_back = Instant::now() + ctx.cfg.reclaim_interval();
                if let Err(e) = self.take_back(&mut permit).await {
                    self.failed("take back", e).await;
                    continue;
                }
                if permit.num_permits() == 0 {
                    continue;
                }
            }
            // The slot may have taken a while: no reclaim or read once told to drain.
            if self.drained().await {
                continue;
            }
            // Reclaim tasks idle past the visibility timeout (dead or stuck workers), but
            // not right after Redis was stalled or unreachable: its idle clocks ran on, and
            // live workers must renew their leases first.
            if Instant::now() >= self.next_reclaim && ctx.reclaim_allowed() {
                match self.reclaim(&mut permit).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        self.failed("reclaim", e).await;
                        continue;
                    }
                }
                if permit.num_permits() == 0 {
                    continue;
                }
            }
            let mut c = match self.conn.get().await {
                Ok(c) => c,
                Err(e) => {
                    self.failed("read", e).await;
                    continue;
                }
            };
            if self.partitioned {
                // Partitions share the slots: a reader holds slots only for a read that
                // answers at once, never while it blocks, so an empty partition never
                // keeps the slots from a busy one.
                match ctx
                    .queue()
                    .read_now(&mut c, ctx.consumer(), permit.num_permits())
                    .await
                {
                    Ok(entries) if !entries.is_empty() => {
                        ctx.health.set_ready(true);
                        if ctx.shutdown.is_cancelled() {
                            self.hand_back(entries, 1);
                            break;
                        }
                        self.dispatch(entries, &mut permit);
                        continue;
                    }
                    Ok(_) => ctx.health.set_ready(true),
                    Err(e) => {
                        self.failed("read", e).await;
                        continue;
                    }
                }
                drop(permit);
                match ctx.queue().read(&mut c, ctx.consumer(), 1, block).await {
                    Ok(entries) => {
                        ctx.health.set_ready(true);
                        if entries.is_empty() {
                            continue;
                        }
                        if ctx.shutdown.is_cancelled() {
                            self.hand_back(entries, 1);
                            break;
                        }
                        if self.dispatch_when_free(entries).await {
                            break;
                        }
                    }
                    Err(e) => self.failed("read", e).await,
                }
                continue;
            }
            match ctx
                .queue()
                .read(&mut c, ctx.consumer(), permit.num_permits(), block)
                .await
            {
                Ok(entries) => {
                    ctx.health.set_ready(true);
                    if entries.is_empty() {
                        continue;
                    }
                    if ctx.shutdown.is_cancelled() {
                        // Read just as we were told to stop: hand them back untouched.
                        self.hand_back(entries, 1);
                        break;
                    }
                    self.dispatch(entries, &mut permit);
                }
                Err(e) => self.failed("read", e).await,
            }
        }
        ctx.health.set_ready(false);
    }

    /// Starts entries read without holding slots (a blocking read of a partitioned pool)
    /// as slots free up; meanwhile they are tracked, so their leases are renewed. Returns
    /// true when shutting down (the rest is handed back).
    async fn dispatch_when_free(&self, entries: Vec<Entry>) -> bool {
        let ctx = &self.ctx;
        let mut entries = entries.into_iter();
        while let Some(e) = entries.next() {
            if !ctx.track(e.id) {
                // Running here already (redelivered by a recreated group).
                ctx.lease_regained(e.id);
                continue;
            }
            let slot = ctx.slots(false).await;
            // `dispatch` tracks it again (and counts it in flight).
            if let Ok(mut s) = ctx.inflight.lock() {
                s.remove(&e.id);
            }
            match slot {
                Some(mut p) => self.dispatch(vec![e], &mut p),
                None => {
                    self.hand_back(std::iter::once(e).chain(entries).collect(), 1);
                    return true;
                }
            }
        }
        false
    }

    /// Hands back entries that were delivered but never started (their delivery does not
    /// count: `uncount` is subtracted from their counter).
    fn hand_back(&self, entries: Vec<Entry>, uncount: u32) {
        for e in entries {
            if self.ctx.track(e.id) {
                self.ctx.health.metrics.in_flight.inc();
                self.ctx
                    .release_later(e.id, e.deliveries.saturating_sub(uncount));
            }
        }
    }
}

/// The URL without its passwords, for logs.
pub fn redacted(url: &str) -> String {
    crate::target::redacted(url)
}

/// Runs the worker until `shutdown` is cancelled, then drains: stops reading, lets
/// in-flight tasks finish within the grace period, hands back the rest, flushes acks.
/// A second cancellation of `hard_stop` aborts running tasks at once.
pub async fn run(
    cfg: WorkerConfig,
    handler: Handler,
    health: Health,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), QueueError> {
    let target = Target::new(&cfg.redis_url, &cfg.tls)?;
    if cfg.pool.is_cluster() != target.is_cluster() {
        return Err(QueueError::InvalidArgument(format!(
            "the pool's keys are {} but the URL {:?} names a {} target",
            if cfg.pool.is_cluster() {
                "hash-tagged for Redis Cluster"
            } else {
                "not hash-tagged"
            },
            target.redacted(),
            target.mode()
        )));
    }
    cfg.pool.validate()?;
    let block = cfg.block();
    // Shared by the partitions: the concurrency slots, the command connection, the task
    // tracker and what is known of Redis's health and clock.
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let cmd = Arc::new(Conn::new(target.clone(), Some(Duration::from_secs(30))));
    let tracker = TaskTracker::new();
    let abandon = CancellationToken::new();
    let started = Instant::now();
    let trouble = Arc::new(Mutex::new(None));
    let clock_offset_ms = Arc::new(AtomicI64::new(0));
    let clock_known = Arc::new(AtomicBool::new(false));
    let renew_stop = CancellationToken::new();
    let drain_gate = Arc::new(DrainGate::new(cfg.pool.partitions()));
    let mut ctxs = Vec::new();
    let mut ackers = Vec::new();
    let mut renewers = Vec::new();
    let mut readers = Vec::new();
    for (partition, queue) in cfg.pool.queues().into_iter().enumerate() {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            sem: sem.clone(),
            cmd: cmd.clone(),
            cfg: cfg.clone(),
            queue,
            handler: handler.clone(),
            health: health.clone(),
            inflight: Mutex::new(HashSet::new()),
            done_tx,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            abandon: abandon.clone(),
            started,
            trouble: trouble.clone(),
            clock_offset_ms: clock_offset_ms.clone(),
            clock_known: clock_known.clone(),
            lease_lost: Mutex::new(HashSet::new()),
            drain_gate: drain_gate.clone(),
        });
        ackers.push(tokio::spawn(acknowledger(ctx.clone(), done_rx)));
        renewers.push(tokio::spawn(renewer(ctx.clone(), renew_stop.clone())));
        let reader = Reader {
            ctx: ctx.clone(),
            conn: Conn::new(target.clone(), Some(block + Duration::from_secs(5))),
            connected: false,
            ever_connected: false,
            attempt: 0,
            cursor: EntryId::ZERO,
            next_reclaim: Instant::now(),
            next_take_back: Instant::now(),
            lost_connection: false,
            partitioned: cfg.pool.partitions() > 1,
            next_drain_check: Instant::now(),
            drain_warned: false,
            parked: false,
        };
        debug!(
            partition,
            stream = ctx.queue().stream(),
            "reading partition"
        );
        readers.push(tokio::spawn(reader.run()));
        ctxs.push(ctx);
    }
    let ctx = ctxs[0].clone();
    let ping = tokio::spawn(pinger(ctx.clone(), target, renew_stop.clone()));

    shutdown.cancelled().await;
    // Not ready from the signal on, not only when the blocking read returns.
    ctx.health.set_stopping();
    let grace = ctx.cfg.shutdown_grace;
    info!(
        in_flight = ctx.health.metrics.in_flight.get(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: stopped reading, finishing in-flight tasks"
    );
    let deadline = tokio::time::Instant::now() + grace;
    for reader in readers {
        if let Err(e) = reader.await {
            error!(error = %e, "reader task failed");
        }
    }
    ctx.tracker.close();
    tokio::select! {
        _ = ctx.tracker.wait() => {}
        _ = tokio::time::sleep_until(deadline) => {
            warn!(remaining = ctx.tracker.len(), "grace period over: handing back unfinished tasks");
            hard_stop.cancel();
        }
        _ = hard_stop.cancelled() => {
            warn!(remaining = ctx.tracker.len(), "stopping now: handing back unfinished tasks");
        }
    }
    // Aborted tasks only send their hand-back; this is quick.
    if tokio::time::timeout(Duration::from_secs(5), ctx.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = ctx.tracker.len(),
            "some tasks did not stop; they stay pending and will be reclaimed"
        );
    }
    renew_stop.cancel();
    for renew in renewers {
        let _ = renew.await;
    }
    let _ = ping.await;
    let flushes = ctxs.iter().map(|c| {
        let (tx, rx) = oneshot::channel();
        c.send(Done::Flush(tx));
        rx
    });
    if tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(flushes))
        .await
        .is_err()
    {
        warn!(
            "could not flush acknowledgements within 5s (redis unavailable?); those tasks stay pending and will be reclaimed"
        );
    }
    ctx.abandon.cancel();
    for acker in ackers {
        acker.abort();
    }
    info!(
        succeeded = ctx.health.metrics.succeeded.get(),
        dead_lettered = ctx.health.metrics.dead_lettered.get(),
        "worker stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_are_capped() {
        assert_eq!(reconnect_backoff(1), Duration::from_millis(100));
        assert_eq!(reconnect_backoff(2), Duration::from_millis(200));
        assert_eq!(reconnect_backoff(100), Duration::from_secs(5));
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            let d2 = retry_delay(base, max, 2);
            assert!(d2 >= Duration::from_millis(800) && d2 <= Duration::from_millis(1200));
            let d3 = retry_delay(base, max, 3);
            assert!(d3 >= Duration::from_millis(1600) && d3 <= Duration::from_millis(2400));
            assert!(retry_delay(base, max, 50) <= max);
        }
    }

    #[test]
    fn intervals_sit_inside_the_visibility_timeout() {
        let cfg = WorkerConfig {
            redis_url: String::new(),
            pool: Pool::new("s", "g"),
            consumer: "c".into(),
            concurrency: 1,
            batch: 1,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 3,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            task_timeout: None,
            tls: Tls::none(),
        };
        assert_eq!(cfg.renew_interval(), Duration::from_secs(10));
        assert_eq!(cfg.reclaim_interval(), Duration::from_secs(15));
        assert_eq!(cfg.block(), Duration::from_secs(2));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redacted("redis://:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
