//! The queue hub: every pool's queue is read off the reconcile path.
//!
//! One task per Redis target (URL + TLS material, [`Target::key`]: standalone, Sentinel
//! or Cluster) holds that target's connection, reads the stats of each pool on it every
//! poll interval (all due pools at once: their scripts share the multiplexed connection,
//! so one round trip serves them all; every partition of a pool, summed, on Cluster each
//! from its node), runs the writes reconciles ask for
//! (drain requests, consumer removal) before the next read, and keeps the latest
//! [`Snapshot`] of each pool. A reconcile only looks at the snapshot and queues writes: it
//! never waits for Redis, so one frozen or unreachable Redis delays nothing but its own
//! pools' queue figures, and a reconnect (up to the connect timeout) holds up no
//! reconcile. When a pool's snapshot changes in anything the operator acts on (backlog,
//! who holds what, drains, reachability) the hub triggers its reconcile; a pool whose
//! queue does not change costs one read per poll and no reconcile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;
use workpool_worker::queue::{Pool as QueuePool, QueueError, QueueStats, RemoveConsumer};
use workpool_worker::target::{Connection, Target};

use crate::crd::WorkPool;
use crate::metrics::Metrics;
use crate::probe::ProbeError;

/// Pools of one Redis whose queue reads are in flight at once on its connection.
const READS_IN_FLIGHT: usize = 128;

/// (namespace, name) of a pool.
pub type PoolKey = (String, String);

/// A pool's queue as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stats, or why they could not be read.
    pub result: Result<QueueStats, ProbeError>,
    /// When the read started (milliseconds since the epoch): every write queued before it
    /// was done before the read.
    pub taken_ms: u64,
    /// Counts the pool's reads (a new value is a new read).
    pub seq: u64,
}

/// A write to a pool's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Tell these consumers to stop taking tasks (in the pool's one drain hash, beside
    /// partition 0).
    Drain(Vec<String>),
    /// Take drains back (or remove the fields of consumers that are gone).
    Undrain(Vec<String>),
    /// Remove these consumers from the group, each only if it holds nothing in any
    /// partition.
    RemoveConsumers(Vec<String>),
}

/// What a pool asks of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The pool's Redis target (its URL may carry a password: never logged).
    pub target: Target,
    /// Its key names: partitions, group, dead-letter streams (hash-tagged on Cluster).
    pub queue: QueuePool,
    /// How often to read it.
    pub poll: Duration,
}

struct Pool {
    reg: Registration,
    due: Instant,
    /// Why the next read happens early (a metric label), if it does.
    reason: &'static str,
    snapshot: Option<Snapshot>,
    commands: Vec<Command>,
}

#[derive(Default)]
struct State {
    pools: HashMap<PoolKey, Pool>,
    /// One reader per target, by [`Target::key`]; its notifier.
    targets: HashMap<String, Arc<Notify>>,
    /// Commands run by detached hubs (tests), in order.
    log: Vec<(PoolKey, Command)>,
}

struct Inner {
    state: Mutex<State>,
    trigger: mpsc::UnboundedSender<ObjectRef<WorkPool>>,
    metrics: Option<Metrics>,
    timeout: Duration,
    detached: bool,
    /// The origin of the poll ticks (see [`next_tick`]).
    epoch: Instant,
}

/// The per-Redis readers of every pool's queue; cheap to clone.
#[derive(Clone)]
pub struct QueueHub {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The next read of a pool polled every `poll`: the first multiple of `poll` since
/// `epoch` after `now`. Pools of one Redis with the same interval fall due on the same
/// ticks, so at rest their reads go out together (one wake of the Redis's task, one
/// round trip on its connection) instead of one wake per pool spread over the interval.
fn next_tick(epoch: Instant, now: Instant, poll: Duration) -> Instant {
    let poll_ns = poll.as_nanos().max(1);
    let ticks = now.saturating_duration_since(epoch).as_nanos() / poll_ns + 1;
    epoch + Duration::from_nanos(u64::try_from(ticks * poll_ns).unwrap_or(u64::MAX))
}

/// What a reconcile acts on, for deciding whether a new snapshot is worth one.
fn material(s: &Snapshot) -> impl PartialEq + use<> {
    match &s.result {
        Ok(st) => Ok((
            st.stream_exists,
            st.group_exists,
            st.backlog,
            st.pending,
            st.dead_letters,
            st.oldest_pending_id,
            st.consumers
                .iter()
                .map(|c| (c.name.clone(), c.pending))
                .collect::<BTreeMap<String, u64>>(),
            st.draining.clone(),
            // Each partition's figures are in the status.
            st.partitions
                .iter()
                .map(|p| (p.backlog, p.pending, p.dead_letters))
                .collect::<Vec<_>>(),
        )),
        Err(e) => Err(e.clone()),
    }
}

impl QueueHub {
    /// A hub whose reads trigger reconciles through the returned stream (for
    /// `Controller::reconcile_on`). Redis commands time out after `timeout`.
    pub fn new(
        metrics: Option<Metrics>,
        timeout: Duration,
    ) -> (QueueHub, mpsc::UnboundedReceiver<ObjectRef<WorkPool>>) {
        let (trigger, rx) = mpsc::unbounded();
        let hub = QueueHub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                trigger,
                metrics,
                timeout,
                detached: false,
                epoch: Instant::now(),
            }),
        };
        (hub, rx)
    }

    /// A hub that talks to no Redis: snapshots are set by [`QueueHub::set_snapshot`] and
    /// commands are only recorded ([`QueueHub::take_commands`]). For unit tests of the
    /// reconcile.
    pub fn detached() -> QueueHub {
        let (trigger, _) = mpsc::unbounded();
        QueueHub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                trigger,
                metrics: None,
                timeout: Duration::from_secs(1),
                detached: true,
                epoch: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or updates) a pool. A new pool, or one whose target or queue changed, is
    /// read at once, counted under `reason`.
    pub fn register(&self, key: &PoolKey, reg: Registration, reason: &'static str) {
        let mut wake = Vec::new();
        let mut spawn = None;
        {
            let mut st = self.state();
            let old_target = st.pools.get(key).map(|p| p.reg.target.clone());
            match st.pools.get_mut(key) {
                Some(p) if p.reg == reg => return,
                Some(p) => {
                    let moved = p.reg.target != reg.target || p.reg.queue != reg.queue;
                    // (A detached hub keeps the snapshot a test set before the reconcile.)
                    if moved && !self.inner.detached {
                        p.reason = reason;
                        p.due = Instant::now();
                        p.snapshot = None;
                        p.commands.clear();
                    } else {
                        // Only the poll interval changed.
                        p.due = p.due.min(Instant::now() + reg.poll);
                    }
                    p.reg = reg.clone();
                }
                None => {
                    st.pools.insert(
                        key.clone(),
                        Pool {
                            reg: reg.clone(),
                            due: Instant::now(),
                            reason,
                            snapshot: None,
                            commands: Vec::new(),
                        },
                    );
                }
            }
            if self.inner.detached {
                return;
            }
            for target in [old_target, Some(reg.target.clone())].into_iter().flatten() {
                if let Some(n) = st.targets.get(target.key()) {
                    wake.push(n.clone());
                } else if target == reg.target {
                    let n = Arc::new(Notify::new());
                    st.targets.insert(target.key().to_string(), n.clone());
                    spawn = Some((target, n));
                }
            }
        }
        for n in wake {
            n.notify_one();
        }
        if let Some((target, n)) = spawn {
            let hub = self.clone();
            tokio::spawn(async move { hub.run(target, n).await });
        }
    }

    /// Forgets a pool (deleted, or its queue cannot be named).
    pub fn unregister(&self, key: &PoolKey) {
        let mut st = self.state();
        if let Some(p) = st.pools.remove(key)
            && let Some(n) = st.targets.get(p.reg.target.key())
        {
            n.notify_one();
        }
    }

    /// The pool's latest snapshot.
    pub fn snapshot(&self, key: &PoolKey) -> Option<Snapshot> {
        self.state().pools.get(key).and_then(|p| p.snapshot.clone())
    }

    /// Reads the pool's queue now (not at its next poll); `reason` is the metric label.
    pub fn refresh(&self, key: &PoolKey, reason: &'static str) {
        self.touch(key, |p| {
            p.due = Instant::now();
            p.reason = reason;
        });
    }

    /// Queues a write; it runs before the pool's next read, which follows at once.
    pub fn send(&self, key: &PoolKey, command: Command) {
        if self.inner.detached {
            self.state().log.push((key.clone(), command.clone()));
        }
        self.touch(key, |p| {
            p.commands.push(command);
            p.due = Instant::now();
            p.reason = "write";
        });
    }

    fn touch(&self, key: &PoolKey, f: impl FnOnce(&mut Pool)) {
        let notify = {
            let mut st = self.state();
            let Some(p) = st.pools.get_mut(key) else {
                return;
            };
            f(p);
            let target = p.reg.target.key().to_string();
            st.targets.get(&target).cloned()
        };
        if let Some(n) = notify {
            n.notify_one();
        }
    }

    /// Sets a pool's snapshot (detached hubs, for tests; the pool's registration follows
    /// with its first reconcile).
    pub fn set_snapshot(&self, key: &PoolKey, snapshot: Snapshot) {
        let mut st = self.state();
        let p = st.pools.entry(key.clone()).or_insert_with(|| Pool {
            reg: Registration {
                // A placeholder until the pool's first reconcile registers it (a constant,
                // valid URL: it parses).
                target: Target::new("redis://detached.invalid", &Default::default())
                    .expect("a constant valid URL"),
                queue: QueuePool::new("", ""),
                poll: Duration::from_secs(5),
            },
            due: Instant::now(),
            reason: "poll",
            snapshot: None,
            commands: Vec::new(),
        });
        p.snapshot = Some(snapshot);
    }

    /// The commands sent so far (detached hubs, for tests).
    pub fn take_commands(&self) -> Vec<(PoolKey, Command)> {
        std::mem::take(&mut self.state().log)
    }

    /// The pools registered (for tests and the forget path).
    pub fn registered(&self) -> Vec<PoolKey> {
        let mut v: Vec<PoolKey> = self.state().pools.keys().cloned().collect();
        v.sort();
        v
    }

    /// Deletion: removes the consumers of `pool`'s pods that hold nothing, and the drain
    /// fields of its pods, now, on a connection of its own (the pool may already be
    /// unregistered). Consumers of another pool sharing the group stay. Returns how many
    /// were removed and which still hold tasks.
    pub async fn cleanup_pool(
        &self,
        target: &Target,
        queue: &QueuePool,
        pool: &str,
    ) -> Result<(usize, Vec<(String, u64)>), ProbeError> {
        let t = self.inner.timeout;
        let work = async {
            let mut c = target.connect(Some(t)).await?;
            let st = queue.stats(&c).await?;
            let ours = |n: &str| crate::pods::is_pod_of(pool, n);
            let names: Vec<String> = st
                .consumers
                .iter()
                .map(|c| c.name.clone())
                .filter(|n| ours(n))
                .collect();
            let r = remove_idle(&mut c, queue, &names).await?;
            let fields: Vec<String> = st
                .draining
                .keys()
                .filter(|n| ours(n) && !r.1.iter().any(|(k, _)| k == *n))
                .cloned()
                .collect();
            queue.partition(0).cancel_drain(&mut c, &fields).await?;
            Ok::<_, QueueError>(r)
        };
        match tokio::time::timeout(t * 2, work).await {
            Ok(r) => r.map_err(ProbeError::from_queue),
            Err(_) => Err(ProbeError::Unreachable("timed out".into())),
        }
    }

    /// The pools of `target` that are due, with their commands, and when the next one
    /// is due; `None` when no pool is on `target` any more (the task then ends).
    fn take_due(&self, target: &Target) -> Option<(Vec<Due>, Option<Instant>)> {
        let mut st = self.state();
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let mut any = false;
        for (k, p) in st.pools.iter_mut().filter(|(_, p)| &p.reg.target == target) {
            any = true;
            if p.due <= now {
                due.push((
                    k.clone(),
                    p.reg.queue.clone(),
                    std::mem::take(&mut p.commands),
                    p.reason,
                ));
                p.due = next_tick(self.inner.epoch, now, p.reg.poll);
                p.reason = "poll";
            }
            next = Some(next.map_or(p.due, |n: Instant| n.min(p.due)));
        }
        if !any {
            st.targets.remove(target.key());
            return None;
        }
        Some((due, next))
    }

    /// Stores a read and its metrics; triggers the pool's reconcile when it changed what
    /// the operator acts on.
    fn store(
        &self,
        key: &PoolKey,
        queue: &QueuePool,
        reason: &str,
        result: Result<QueueStats, ProbeError>,
        taken_ms: u64,
    ) {
        let changed = {
            let mut st = self.state();
            let Some(p) = st.pools.get_mut(key) else {
                return;
            };
            if &p.reg.queue != queue {
                return; // re-registered meanwhile: this read is of the old queue
            }
            // Under the lock, and only for a pool still registered: forgetting a pool
            // unregisters it, then removes its series, so a read that was in flight
            // meanwhile cannot bring them back (it either wrote before the removal or
            // finds the pool gone).
            self.record(key, reason, &result);
            let seq = p.snapshot.as_ref().map_or(1, |s| s.seq + 1);
            let new = Snapshot {
                result,
                taken_ms,
                seq,
            };
            let changed = p
                .snapshot
                .as_ref()
                .is_none_or(|old| material(old) != material(&new));
            p.snapshot = Some(new);
            changed
        };
        if changed {
            let _ = self
                .inner
                .trigger
                .unbounded_send(ObjectRef::new(&key.1).within(&key.0));
        }
    }

    fn record(&self, key: &PoolKey, reason: &str, result: &Result<QueueStats, ProbeError>) {
        let Some(m) = &self.inner.metrics else { return };
        let l = [key.0.as_str(), key.1.as_str()];
        m.probes.with_label_values(&[l[0], l[1], reason]).inc();
        match result {
            Ok(st) => {
                m.queue_up.with_label_values(&l).set(1);
                m.backlog.with_label_values(&l).set(st.backlog as i64);
                m.pending.with_label_values(&l).set(st.pending as i64);
                m.dead_letters
                    .with_label_values(&l)
                    .set(st.dead_letters as i64);
                m.oldest_pending.with_label_values(&l).set(
                    st.oldest_pending_age_ms
                        .map(|ms| (ms / 1000) as i64)
                        .unwrap_or(0),
                );
                m.set_partitions(l[0], l[1], st);
            }
            Err(e) => {
                m.queue_up.with_label_values(&l).set(0);
                m.probe_errors
                    .with_label_values(&[l[0], l[1], e.metric_label()])
                    .inc();
            }
        }
    }

    async fn connect(&self, target: &Target) -> Result<Connection, ProbeError> {
        let t = self.inner.timeout;
        // Sentinel asks the sentinels and then the primary: more than one round trip.
        match tokio::time::timeout(t * 2, target.connect(Some(t))).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ProbeError::from_queue(e)),
            Err(_) => Err(ProbeError::Unreachable("connect timed out".into())),
        }
    }

    /// The task of one Redis target: until no pool is on it.
    async fn run(self, target: Target, notify: Arc<Notify>) {
        let mut conn: Option<Connection> = None;
        let mut failures: u32 = 0;
        loop {
            let Some((due, next)) = self.take_due(&target) else {
                debug!("no pool on this Redis any more; its reader ends");
                return;
            };
            if due.is_empty() {
                let wait = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
                tokio::select! {
                    _ = tokio::time::sleep_until(wait) => {}
                    _ = notify.notified() => {}
                }
                continue;
            }
            let taken_ms = now_ms();
            let reused = conn.is_some();
            let mut results = match self.read_on(&target, &mut conn, due.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    for (key, queue, _, reason) in &due {
                        self.store(key, queue, reason, Err(e.clone()), taken_ms);
                    }
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(200 * (1u64 << failures.min(7)))
                        .min(Duration::from_secs(30));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = notify.notified() => {}
                    }
                    continue;
                }
            };
            let broken = |r: &Result<QueueStats, ProbeError>| {
                matches!(
                    r,
                    Err(ProbeError::Unreachable(_) | ProbeError::Auth(_) | ProbeError::Tls(_))
                )
            };
            if reused && results.iter().any(|(_, r)| broken(r)) {
                // A connection kept from earlier that broke (Redis restarted, a Sentinel
                // failover, a proxy closed it): once more on a new one, so that a read asked for now (a wake)
                // is not spent on a dead socket.
                conn = None;
                let again: Vec<Due> = due
                    .iter()
                    .zip(&results)
                    .filter(|(_, (_, r))| broken(r))
                    .map(|(d, _)| d.clone())
                    .collect();
                match self.read_on(&target, &mut conn, again).await {
                    Ok(redone) => {
                        for (d, r) in redone {
                            if let Some(slot) = results.iter_mut().find(|(k, _)| k.0 == d.0) {
                                slot.1 = r;
                            }
                        }
                    }
                    Err(e) => {
                        for (_, r) in results.iter_mut().filter(|(_, r)| broken(r)) {
                            *r = Err(e.clone());
                        }
                    }
                }
            }
            let mut any_broken = false;
            for ((key, queue, _, reason), r) in results {
                any_broken |= broken(&r);
                self.store(&key, &queue, reason, r, taken_ms);
            }
            if any_broken {
                // Reconnect next time (Redis restarted, a failover: Sentinel names the new
                // primary on connect; password or certificates changed; frozen).
                conn = None;
                failures = failures.saturating_add(1);
            } else {
                failures = 0;
            }
        }
    }

    /// Runs the commands and reads the stats of `due` on `conn` (connecting first when
    /// there is none); every pool's work shares the multiplexed connection, so all of
    /// them cost about one round trip. `Err`: no connection could be made.
    async fn read_on(
        &self,
        target: &Target,
        conn: &mut Option<Connection>,
        due: Vec<Due>,
    ) -> Result<Vec<(Due, Result<QueueStats, ProbeError>)>, ProbeError> {
        let c = match conn {
            Some(c) => c.clone(),
            None => {
                let c = self.connect(target).await?;
                *conn = Some(c.clone());
                c
            }
        };
        let t = self.inner.timeout;
        // Collected first: a lazy `map` over `due` inside the stream made the spawned
        // reader's future fail the compiler's `Send` check (a higher-ranked lifetime).
        let reads: Vec<_> = due
            .into_iter()
            .map(|d: Due| {
                let mut c = c.clone();
                async move {
                    let work = async {
                        for cmd in &d.2 {
                            run_command(&mut c, &d.1, cmd).await?;
                        }
                        d.1.stats(&c).await
                    };
                    let r = match tokio::time::timeout(t * 2, work).await {
                        Ok(r) => r.map_err(ProbeError::from_queue),
                        Err(_) => Err(ProbeError::Unreachable("timed out".into())),
                    };
                    (d, r)
                }
            })
            .collect();
        // In order, a bounded number at once: each reply is parsed while it is in flight,
        // so 10,000 pools read at one tick held all their replies at once (a spike every
        // poll interval that the allocator kept as resident memory).
        Ok(futures::stream::iter(reads)
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await)
    }
}

/// A pool due for a read: its key, queue, queued writes, and why (a metric label).
type Due = (PoolKey, QueuePool, Vec<Command>, &'static str);

async fn remove_idle(
    c: &mut Connection,
    queue: &QueuePool,
    names: &[String],
) -> Result<(usize, Vec<(String, u64)>), QueueError> {
    let mut removed = 0;
    let mut kept = Vec::new();
    for n in names {
        match queue.remove_consumer_if_idle(c, n).await? {
            RemoveConsumer::Removed => removed += 1,
            RemoveConsumer::StillPending(p) => kept.push((n.clone(), p)),
            RemoveConsumer::NotFound | RemoveConsumer::NoGroup => {}
        }
    }
    Ok((removed, kept))
}

async fn run_command(
    c: &mut Connection,
    queue: &QueuePool,
    cmd: &Command,
) -> Result<(), QueueError> {
    // The pool's one drain hash lives beside partition 0 (`<P_0>:draining`).
    let drains = queue.partition(0);
    match cmd {
        Command::Drain(names) => drains.request_drain(c, names).await,
        Command::Undrain(names) => drains.cancel_drain(c, names).await,
        Command::RemoveConsumers(names) => {
            remove_idle(c, queue, names).await?;
            // Their drain fields go with them (only of consumers really gone: one that
            // still holds tasks keeps its field until it is removed).
            let st = queue.stats(c).await?;
            let gone: Vec<String> = names
                .iter()
                .filter(|n| !st.consumers.iter().any(|c| &c.name == *n))
                .filter(|n| st.draining.contains_key(*n))
                .cloned()
                .collect();
            debug!(consumers = ?names, drain_fields = ?gone, "consumers of gone pods removed");
            drains.cancel_drain(c, &gone).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub that starts no reader but keeps metrics, as the operator's does.
    fn hub_with_metrics(metrics: &Metrics) -> QueueHub {
        let (trigger, _) = mpsc::unbounded();
        QueueHub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                trigger,
                metrics: Some(metrics.clone()),
                timeout: Duration::from_secs(1),
                detached: true,
                epoch: Instant::now(),
            }),
        }
    }

    fn series_of(metrics: &Metrics, pool: &str) -> Vec<String> {
        let label = format!("workpool=\"{pool}\"");
        metrics
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_string)
            .collect()
    }

    /// Reads in flight when a pool is forgotten finish after it: they must not bring back
    /// the series forgetting removed (finding 10 saw exactly that once in CI: a deleted
    /// pool's queue gauges and `probes_total 1` exported a minute later).
    #[tokio::test]
    async fn a_read_that_finishes_after_its_pool_is_forgotten_leaves_no_series() {
        let metrics = Metrics::new().expect("metrics");
        let hub = hub_with_metrics(&metrics);
        let queue = QueuePool::new("s", "g");
        let reg = Registration {
            target: Target::new("redis://r.invalid", &Default::default()).expect("target"),
            queue: queue.clone(),
            poll: Duration::from_secs(5),
        };
        let stats = QueueStats {
            backlog: 3,
            ..Default::default()
        };
        let (gone, kept) = (
            ("ns".to_string(), "gone".to_string()),
            ("ns".to_string(), "kept".to_string()),
        );
        for key in [&gone, &kept] {
            hub.register(key, reg.clone(), "poll");
            hub.store(key, &queue, "poll", Ok(stats.clone()), 1);
        }
        assert!(!series_of(&metrics, "gone").is_empty());
        // Forgetting, in the controller's order: unregister, then remove the series.
        hub.unregister(&gone);
        metrics.remove_pool("ns", "gone");
        // The reads of both that were in flight come back.
        for r in [Ok(stats.clone()), Err(ProbeError::Unreachable("x".into()))] {
            hub.store(&gone, &queue, "poll", r.clone(), 2);
            hub.store(&kept, &queue, "poll", r, 2);
        }
        assert_eq!(series_of(&metrics, "gone"), Vec::<String>::new());
        assert!(hub.snapshot(&gone).is_none());
        let kept_series = series_of(&metrics, "kept").join("\n");
        assert!(
            kept_series.contains("workpool_queue_up{namespace=\"ns\",workpool=\"kept\"} 0"),
            "{kept_series}"
        );
    }

    #[test]
    fn pools_read_at_different_times_fall_due_on_the_same_tick() {
        let epoch = Instant::now();
        let poll = Duration::from_secs(5);
        let ms = Duration::from_millis;
        // Read at 0.3 s, 2.9 s and 4.999 s: all next read at 5 s.
        for at in [ms(300), ms(2900), ms(4999)] {
            assert_eq!(next_tick(epoch, epoch + at, poll), epoch + poll);
        }
        // A read on a tick: the next tick, one whole interval later.
        assert_eq!(next_tick(epoch, epoch + poll, poll), epoch + poll * 2);
        // Never later than one interval after the read.
        for at in [ms(1), ms(7_777), ms(123_456)] {
            let next = next_tick(epoch, epoch + at, poll);
            assert!(next > epoch + at && next <= epoch + at + poll);
        }
    }
}
