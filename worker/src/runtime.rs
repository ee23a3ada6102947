//! The worker runtime: reads tasks in batches, runs the handler with bounded concurrency,
//! acknowledges in batches, retries, dead-letters, renews leases, reclaims the tasks of
//! dead workers, reconnects to Redis, and drains on shutdown.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::handler::{Handler, TaskError};
use crate::metrics::Health;
use crate::queue::{Entry, EntryId, Queue, QueueError};

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Redis URL.
    pub redis_url: String,
    /// Stream, group and dead-letter stream.
    pub queue: Queue,
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

/// A lazily (re)connected multiplexed connection.
struct Conn {
    client: redis::Client,
    response_timeout: Option<Duration>,
    cur: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Conn {
    fn new(client: redis::Client, response_timeout: Option<Duration>) -> Self {
        Conn {
            client,
            response_timeout,
            cur: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, QueueError> {
        let mut g = self.cur.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = crate::queue::connect_client(&self.client, self.response_timeout).await?;
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

struct Ctx {
    cfg: WorkerConfig,
    handler: Handler,
    health: Health,
    cmd: Conn,
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
}

impl Ctx {
    fn queue(&self) -> &Queue {
        &self.cfg.queue
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
        self.health.metrics.in_flight.dec();
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
        F: Fn(MultiplexedConnection) -> Fut,
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
                    self.cmd.reset().await;
                    let d = reconnect_backoff(attempt);
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

    /// Moves a task to the dead-letter stream (atomically with its ack + delete).
    async fn dead_letter(&self, entry: &Entry, reason: &str) {
        let r = self
            .with_redis("dead-letter", &self.abandon, |mut c| async move {
                self.queue()
                    .dead_letter(&mut c, entry, self.consumer(), reason)
                    .await
            })
            .await;
        match r {
            Some(Ok(dl)) => {
                self.health.metrics.dead_lettered.inc();
                warn!(task = %entry.id, deliveries = entry.deliveries, dead_letter_id = %dl,
                    stream = self.queue().dead_letter_stream(), error = reason, "task moved to the dead-letter stream");
            }
            Some(Err(e)) => {
                error!(task = %entry.id, error = %e, "cannot write the dead-letter entry; the task stays pending and will be reclaimed");
            }
            None => {
                warn!(task = %entry.id, "shutting down while redis is unavailable; the task stays pending and will be reclaimed");
            }
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
/// Redis is kept equal to the number of runs), dead-letters when exhausted or malformed.
async fn process(ctx: Arc<Ctx>, mut entry: Entry, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
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
            TaskError::Malformed(_) => {
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
        let p = tokio::select! {
            p = ctx.sem.clone().acquire_owned() => p,
            _ = ctx.shutdown.cancelled() => {
                ctx.release_later(entry.id, entry.deliveries);
                return;
            }
        };
        let Ok(p) = p else {
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
            Some(Ok(true)) => entry.deliveries = next,
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
            let r = ctx
                .with_redis("ack", &ctx.abandon, |mut c| {
                    let ids = &ids;
                    let ctx = &ctx;
                    async move { ctx.queue().ack(&mut c, ids).await }
                })
                .await;
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    error!(error = %e, count = ids.len(), "acknowledging failed; those tasks stay pending and will be reclaimed")
                }
                None => {
                    warn!(
                        count = ids.len(),
                        "gave up acknowledging (shutting down, redis unavailable); those tasks stay pending and will be reclaimed"
                    )
                }
            }
            ctx.health.metrics.in_flight.sub(ids.len() as i64);
            if !tracked.is_empty()
                && let Ok(mut s) = ctx.inflight.lock()
            {
                for id in &tracked {
                    s.remove(id);
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
        let ids: Vec<EntryId> = match ctx.inflight.lock() {
            Ok(s) => s.iter().copied().collect(),
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
                    if ctx.is_tracked(&id) {
                        warn!(task = %id, "lease lost: the task was reclaimed by another worker or deleted; it may run twice");
                    }
                }
            }
            Some(Err(e)) => warn!(error = %e, "lease renewal failed"),
            None => return,
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
}

impl Reader {
    /// Starts work on entries; each takes one permit from `permit`.
    fn dispatch(&self, entries: Vec<Entry>, permit: &mut OwnedSemaphorePermit) {
        let ctx = &self.ctx;
        let max = ctx.cfg.max_deliveries;
        ctx.health.metrics.in_flight.add(entries.len() as i64);
        let inline = ctx.handler.is_inline();
        let mut ok_ids = Vec::new();
        let mut ok_permit: Option<OwnedSemaphorePermit> = None;
        for e in entries {
            let Some(p) = permit.split(1) else {
                // Not expected: we never read more entries than we hold permits for.
                error!(task = %e.id, "no concurrency slot for a read task; it stays pending and will be reclaimed");
                ctx.health.metrics.in_flight.dec();
                continue;
            };
            if e.deliveries > max {
                ctx.track(e.id);
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
            ctx.track(e.id);
            let ctx2 = ctx.clone();
            ctx.tracker.spawn(async move { process(ctx2, e, p).await });
        }
        if !ok_ids.is_empty() {
            ctx.send(Done::Ack {
                ids: ok_ids,
                permit: ok_permit,
                tracked: false,
            });
        }
    }

    /// Connection or command failure: not ready, reconnect later.
    async fn failed(&mut self, what: &str, e: QueueError) {
        let ctx = &self.ctx;
        ctx.health.metrics.redis_errors.inc();
        if e.is_connection_error() || matches!(e, QueueError::NoGroup { .. }) {
            if self.connected {
                warn!(error = %e, "{what} failed: lost redis; reconnecting");
            }
            ctx.health.set_ready(false);
            self.connected = false;
            if e.is_connection_error() {
                self.conn.reset().await;
            }
        } else {
            // A command error that is not about the connection (e.g. the key holds another
            // type): not reading, so not ready; back off a little.
            ctx.health.set_ready(false);
            error!(error = %e, "{what} failed");
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
            ctx.queue().ensure_group(&mut c).await
        }
        .await;
        match r {
            Ok(()) => {
                if self.ever_connected {
                    info!(attempts = self.attempt + 1, "reconnected to redis");
                } else {
                    info!(
                        stream = ctx.queue().stream(),
                        group = ctx.queue().group(),
                        consumer = ctx.consumer(),
                        "connected to redis"
                    );
                }
                self.attempt = 0;
                self.connected = true;
                self.ever_connected = true;
                // Right after (re)connecting, look for tasks left by dead workers.
                self.next_reclaim = Instant::now();
                true
            }
            Err(e) => {
                ctx.health.set_ready(false);
                ctx.health.metrics.redis_errors.inc();
                self.conn.reset().await;
                self.attempt += 1;
                let d = reconnect_backoff(self.attempt);
                warn!(attempt = self.attempt, retry_in_ms = d.as_millis() as u64, error = %e, url = %redacted(&ctx.cfg.redis_url), "cannot connect to redis");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = ctx.shutdown.cancelled() => {}
                }
                false
            }
        }
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
            // Wait for at least one free slot, then take up to a batch.
            let first = tokio::select! {
                p = ctx.sem.clone().acquire_many_owned(1) => p,
                _ = ctx.shutdown.cancelled() => break,
            };
            let Ok(mut permit) = first else { break };
            let extra = ctx.sem.available_permits().min(batch - 1);
            if extra > 0
                && let Ok(p) = ctx.sem.clone().try_acquire_many_owned(extra as u32)
            {
                permit.merge(p);
            }
            // Reclaim tasks idle past the visibility timeout (dead or stuck workers).
            if Instant::now() >= self.next_reclaim {
                let mut c = match self.conn.get().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.failed("reclaim", e).await;
                        continue;
                    }
                };
                match ctx
                    .queue()
                    .autoclaim(
                        &mut c,
                        ctx.consumer(),
                        ctx.cfg.visibility_timeout,
                        self.cursor,
                        permit.num_permits(),
                    )
                    .await
                {
                    Ok(ac) => {
                        self.cursor = ac.next_cursor;
                        if self.cursor == EntryId::ZERO {
                            self.next_reclaim = Instant::now() + ctx.cfg.reclaim_interval();
                        }
                        if !ac.deleted.is_empty() {
                            info!(
                                count = ac.deleted.len(),
                                "dropped pending ids whose entries were deleted from the stream"
                            );
                        }
                        let entries: Vec<Entry> = ac
                            .entries
                            .into_iter()
                            .filter(|e| {
                                // Our own task whose lease ran out while it still runs here.
                                !ctx.is_tracked(&e.id)
                            })
                            .collect();
                        if !entries.is_empty() {
                            ctx.health.metrics.reclaimed.inc_by(entries.len() as u64);
                            info!(
                                count = entries.len(),
                                "reclaimed tasks idle past the visibility timeout"
                            );
                            if ctx.shutdown.is_cancelled() {
                                self.hand_back(entries, 1);
                                break;
                            }
                            self.dispatch(entries, &mut permit);
                        }
                    }
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
            match ctx
                .queue()
                .read(&mut c, ctx.consumer(), permit.num_permits(), block)
                .await
            {
                Ok(entries) => {
                    ctx.health.set_ready(!ctx.shutdown.is_cancelled());
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

    /// Hands back entries that were delivered but never started (their delivery does not
    /// count: `uncount` is subtracted from their counter).
    fn hand_back(&self, entries: Vec<Entry>, uncount: u32) {
        self.ctx.health.metrics.in_flight.add(entries.len() as i64);
        for e in entries {
            self.ctx.track(e.id);
            self.ctx
                .release_later(e.id, e.deliveries.saturating_sub(uncount));
        }
    }
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
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
    cfg.queue.validate()?;
    let client = redis::Client::open(cfg.redis_url.as_str()).map_err(|e| {
        QueueError::InvalidArgument(format!(
            "invalid redis URL {:?}: {e}",
            redacted(&cfg.redis_url)
        ))
    })?;
    let block = cfg.block();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        sem: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
        cmd: Conn::new(client.clone(), Some(Duration::from_secs(30))),
        cfg,
        handler,
        health,
        inflight: Mutex::new(HashSet::new()),
        done_tx,
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
        hard_stop: hard_stop.clone(),
        abandon: CancellationToken::new(),
    });
    let acker = tokio::spawn(acknowledger(ctx.clone(), done_rx));
    let renew_stop = CancellationToken::new();
    let renew = tokio::spawn(renewer(ctx.clone(), renew_stop.clone()));
    let reader = Reader {
        ctx: ctx.clone(),
        conn: Conn::new(client, Some(block + Duration::from_secs(5))),
        connected: false,
        ever_connected: false,
        attempt: 0,
        cursor: EntryId::ZERO,
        next_reclaim: Instant::now(),
    };
    let reader = tokio::spawn(reader.run());

    shutdown.cancelled().await;
    let grace = ctx.cfg.shutdown_grace;
    info!(
        in_flight = ctx.health.metrics.in_flight.get(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: stopped reading, finishing in-flight tasks"
    );
    let deadline = tokio::time::Instant::now() + grace;
    if let Err(e) = reader.await {
        error!(error = %e, "reader task failed");
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
    let _ = renew.await;
    let (tx, rx) = oneshot::channel();
    ctx.send(Done::Flush(tx));
    if tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .is_err()
    {
        warn!(
            "could not flush acknowledgements within 5s (redis unavailable?); those tasks stay pending and will be reclaimed"
        );
    }
    ctx.abandon.cancel();
    acker.abort();
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
            queue: Queue::new("s", "g"),
            consumer: "c".into(),
            concurrency: 1,
            batch: 1,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 3,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            task_timeout: None,
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
