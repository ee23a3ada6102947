//! Wake from zero: while an autoscaled pool is at zero (desired 0, no live pods), the
//! operator notices its first task at once instead of at the next queue poll.
//!
//! Every pool at zero is registered here by its reconcile ([`Wake::watch`]) with its
//! Redis target and, per partition, its stream and the id after which an entry is new:
//! the group's last delivered id as the reconcile's probe read it (`0-0` while the group
//! or the stream does not exist). While nothing consumes the group (no pods), every entry
//! after that id is an entry the probe has not counted, so no entry added between the
//! probe and the read can be missed.
//!
//! One task per Redis target holds one dedicated connection and blocks in one
//! `XREAD BLOCK` over the streams of every pool at zero on that Redis (a stream that
//! does not exist yet blocks like any other and is served when its first entry creates
//! it); a Sentinel target is its current primary. On a Redis Cluster one command cannot
//! span hash slots (`CROSSSLOT`, even on one node), and every partition has its own slot:
//! there the task reads each stream without blocking, all of them at once every
//! [`CLUSTER_POLL`] (the cluster client pipelines them per node). On an entry it sends the
//! pool's reference to the controller's trigger stream (`Controller::reconcile_on`) and
//! marks the pool woken, so that the reconcile reads fresh queue stats
//! ([`Wake::take_woken`]) and creates the pods the backlog calls for.
//!
//! - A change of the registered set for a target interrupts the blocked read (its connection
//!   is dropped and opened again); nothing changes in steady state, so nothing is written
//!   to the API and no command is sent but the blocking read (one per
//!   [`BLOCK`] while idle).
//! - A pool is woken at most once per [`MIN_WAKE_INTERVAL`]: under a trickle of entries
//!   below `activationBacklog` this bounds the reconciles (and status writes) to one per
//!   interval per pool; an entry inside the interval wakes the pool at its end.
//! - Redis unreachable, refusing the read, or answering nonsense: the connection is
//!   dropped and opened again after a back-off ([`Backoff`], 200 ms doubling to 30 s);
//!   the queue poll keeps working as before meanwhile. A key that is not a stream is
//!   left out of the read (it would fail the read for every pool on that Redis).
//! - When no pool on a target is at zero, its task ends and its connection closes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use redis::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use workpool_worker::queue::{EntryId, QueueStats};
use workpool_worker::target::{Connection, Target};

use crate::crd::WorkPool;
use crate::metrics::Metrics;

/// How long one `XREAD` blocks before it is sent again (a liveness check of the
/// connection; an entry ends the block at once).
pub const BLOCK: Duration = Duration::from_secs(10);
/// A pool is woken at most once per this interval.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_secs(1);
/// Entries read per stream per `XREAD` (only their ids matter).
const COUNT: usize = 16;
/// How often a Redis Cluster's watched streams are read (see the module docs).
pub const CLUSTER_POLL: Duration = Duration::from_millis(500);

/// (namespace, name) of a pool.
pub type PoolKey = (String, String);

/// What a pool at zero waits for: in any of its partitions' streams on `target`, an
/// entry after that partition's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeTarget {
    /// The pool's Redis target (its URL may carry a password: never logged).
    pub target: Target,
    /// Per partition: the stream and the id after which entries are new.
    pub streams: Vec<(String, EntryId)>,
}

impl WakeTarget {
    /// A pool at zero on `target` as its probe `st` (of every partition) found it.
    pub fn from_stats(target: Target, st: &QueueStats) -> WakeTarget {
        let parts: Vec<&QueueStats> = if st.partitions.is_empty() {
            vec![st]
        } else {
            st.partitions.iter().collect()
        };
        WakeTarget {
            target,
            streams: parts
                .into_iter()
                .map(|p| (p.stream.clone(), crate::decide::wake_after(p)))
                .collect(),
        }
    }

    /// Same target and streams (only the ids may differ).
    fn same_place(&self, other: &WakeTarget) -> bool {
        self.target == other.target
            && self.streams.len() == other.streams.len()
            && self
                .streams
                .iter()
                .zip(&other.streams)
                .all(|(a, b)| a.0 == b.0)
    }
}

#[derive(Default)]
struct State {
    pools: HashMap<PoolKey, WakeTarget>,
    /// One task per target (by [`Target::key`]) with a pool at zero; its notifier.
    watchers: HashMap<String, Arc<Notify>>,
    woken: HashSet<PoolKey>,
}

struct Inner {
    state: Mutex<State>,
    trigger: mpsc::UnboundedSender<ObjectRef<WorkPool>>,
    metrics: Option<Metrics>,
    enabled: bool,
    timeout: Duration,
}

/// The wake-from-zero watchers of every Redis; cheap to clone.
#[derive(Clone)]
pub struct Wake {
    inner: Arc<Inner>,
}

impl Wake {
    /// The watchers and the stream of pools to reconcile (for `Controller::reconcile_on`).
    /// A disabled `Wake` registers nothing and never triggers (pools wait for the poll).
    pub fn new(
        metrics: Option<Metrics>,
        enabled: bool,
    ) -> (Wake, mpsc::UnboundedReceiver<ObjectRef<WorkPool>>) {
        let (trigger, rx) = mpsc::unbounded();
        let w = Wake {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                trigger,
                metrics,
                enabled,
                timeout: Duration::from_secs(5),
            }),
        };
        (w, rx)
    }

    /// A disabled `Wake` (nothing registered, nothing triggered).
    pub fn disabled() -> Wake {
        Self::new(None, false).0
    }

    /// Whether wake from zero is on.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the pool as at zero (`Some`) or not (`None`). Only a change of the
    /// pool's target or streams, a later `after`, or a pool entering or leaving zero
    /// interrupts the read of its Redis; the same registration again changes nothing.
    pub fn watch(&self, key: &PoolKey, target: Option<WakeTarget>) {
        if !self.inner.enabled {
            return;
        }
        let mut notify: Vec<Arc<Notify>> = Vec::new();
        let mut spawn: Option<(Target, Arc<Notify>)> = None;
        {
            let mut st = self.state();
            let old = st.pools.get(key).cloned();
            let new = match (&old, target) {
                (_, None) => None,
                (Some(o), Some(t)) if o.same_place(&t) => Some(WakeTarget {
                    streams: o
                        .streams
                        .iter()
                        .zip(&t.streams)
                        .map(|(a, b)| (a.0.clone(), a.1.max(b.1)))
                        .collect(),
                    ..t
                }),
                (_, Some(t)) => Some(t),
            };
            if old == new {
                return;
            }
            match &new {
                Some(t) => {
                    st.pools.insert(key.clone(), t.clone());
                }
                None => {
                    st.pools.remove(key);
                }
            }
            for target in [
                old.map(|o| o.target),
                new.as_ref().map(|n| n.target.clone()),
            ]
            .into_iter()
            .flatten()
            {
                if let Some(n) = st.watchers.get(target.key()) {
                    notify.push(n.clone());
                } else if new.as_ref().is_some_and(|n| n.target == target) {
                    let n = Arc::new(Notify::new());
                    st.watchers.insert(target.key().to_string(), n.clone());
                    spawn = Some((target, n));
                }
            }
            if let Some(m) = &self.inner.metrics {
                m.wake_watched_pools.set(st.pools.len() as i64);
            }
        }
        for n in notify {
            n.notify_one();
        }
        if let Some((target, n)) = spawn {
            let w = self.clone();
            tokio::spawn(async move { w.run(target, n).await });
        }
    }

    /// Whether the pool was woken since the last call (its reconcile then reads fresh
    /// queue stats instead of the last poll's).
    pub fn take_woken(&self, key: &PoolKey) -> bool {
        self.state().woken.remove(key)
    }

    /// Pools registered as at zero (for tests and metrics).
    pub fn watched(&self) -> Vec<PoolKey> {
        let mut v: Vec<PoolKey> = self.state().pools.keys().cloned().collect();
        v.sort();
        v
    }

    fn fire(&self, key: &PoolKey) {
        self.state().woken.insert(key.clone());
        if let Some(m) = &self.inner.metrics {
            m.wakes.with_label_values(&[&key.0, &key.1]).inc();
        }
        info!(namespace = %key.0, workpool = %key.1, "new task for a pool at zero: waking it");
        let _ = self
            .inner
            .trigger
            .unbounded_send(ObjectRef::new(&key.1).within(&key.0));
    }

    /// The pools on the target with key `key`, or `None` (and the task's slot removed)
    /// when there are none.
    fn snapshot(&self, key: &str) -> Option<Vec<(PoolKey, WakeTarget)>> {
        let mut st = self.state();
        let v: Vec<(PoolKey, WakeTarget)> = st
            .pools
            .iter()
            .filter(|(_, t)| t.target.key() == key)
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        if v.is_empty() {
            st.watchers.remove(key);
            return None;
        }
        Some(v)
    }

    fn error(&self, reason: &str) {
        if let Some(m) = &self.inner.metrics {
            m.wake_errors.with_label_values(&[reason]).inc();
        }
    }

    async fn connect(&self, target: &Target) -> Result<Connection, String> {
        match tokio::time::timeout(
            self.inner.timeout * 2,
            target.connect(Some(BLOCK + self.inner.timeout)),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// The task of one target: until no pool on it is at zero.
    async fn run(self, target: Target, notify: Arc<Notify>) {
        let key = target.key().to_string();
        let cluster = target.is_cluster();
        let mut cursors = Cursors::default();
        let mut throttle = Throttle::default();
        let mut backoff = Backoff::default();
        let mut conn: Option<Connection> = None;
        // Keys found not to be streams, until the registered set changes.
        let mut not_streams: BTreeSet<String> = BTreeSet::new();
        let mut checked: BTreeSet<String> = BTreeSet::new();
        loop {
            let Some(pools) = self.snapshot(&key) else {
                debug!("no pool at zero on this Redis any more; its wake task ends");
                return;
            };
            cursors.sync(&pools);
            let now = Instant::now();
            for key in throttle.due(now) {
                self.fire(&key);
            }
            let c = match &conn {
                Some(c) => c.clone(),
                None => match self.connect(&target).await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.error("unreachable");
                        let d = backoff.next_delay();
                        debug!(error = %e, retry_in = ?d, "wake: cannot connect to Redis");
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = notify.notified() => {}
                        }
                        continue;
                    }
                },
            };
            // Keys that are not streams would fail the read for every pool here.
            let mut c2 = c.clone();
            let mut type_error = None;
            for s in cursors.streams() {
                if checked.contains(&s) {
                    continue;
                }
                match redis::cmd("TYPE")
                    .arg(&s)
                    .query_async::<String>(&mut c2)
                    .await
                {
                    Ok(t) if t == "stream" || t == "none" => {
                        checked.insert(s);
                    }
                    Ok(t) => {
                        warn!(stream = %s, key_type = %t, "wake: the key is not a stream; left out of the wake read");
                        checked.insert(s.clone());
                        not_streams.insert(s);
                    }
                    Err(e) => {
                        type_error = Some(redis_message(&e));
                        break;
                    }
                }
            }
            if let Some(e) = type_error {
                self.error("redis");
                conn = None;
                let d = backoff.next_delay();
                debug!(error = %e, retry_in = ?d, "wake: Redis refused TYPE");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = notify.notified() => {}
                }
                continue;
            }
            let args = cursors.xread_args(&not_streams);
            if args.is_empty() {
                // Only keys of the wrong type: wait for a change.
                tokio::select! {
                    _ = tokio::time::sleep(throttle.wait(Instant::now(), BLOCK)) => {}
                    _ = notify.notified() => {
                        not_streams.clear();
                        checked.clear();
                    }
                }
                continue;
            }
            let block = throttle.wait(Instant::now(), BLOCK);
            let read = async {
                if cluster {
                    // One slot per command: every stream on its own, all at once, then
                    // a pause (see the module docs).
                    let reads = args.iter().map(|(s, id)| {
                        let mut c = c.clone();
                        let mut cmd = redis::cmd("XREAD");
                        cmd.arg("COUNT")
                            .arg(COUNT)
                            .arg("STREAMS")
                            .arg(s)
                            .arg(id.to_string());
                        async move { cmd.query_async::<Value>(&mut c).await }
                    });
                    let answers = futures::future::try_join_all(reads).await?;
                    let merged: Vec<Value> = answers
                        .into_iter()
                        .filter(|v| *v != Value::Nil)
                        .flat_map(|v| match v {
                            Value::Array(a) => a,
                            Value::Map(m) => m
                                .into_iter()
                                .map(|(k, v)| Value::Array(vec![k, v]))
                                .collect(),
                            other => vec![other],
                        })
                        .collect();
                    if merged.is_empty() {
                        tokio::time::sleep(CLUSTER_POLL.min(block)).await;
                        return Ok(Value::Nil);
                    }
                    Ok(Value::Array(merged))
                } else {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT")
                        .arg(COUNT)
                        .arg("BLOCK")
                        .arg(block.as_millis().max(1) as u64)
                        .arg("STREAMS");
                    for (s, _) in &args {
                        cmd.arg(s);
                    }
                    for (_, id) in &args {
                        cmd.arg(id.to_string());
                    }
                    let mut c3 = c.clone();
                    cmd.query_async::<Value>(&mut c3).await
                }
            };
            tokio::select! {
                r = read => match r {
                    Ok(v) => {
                        backoff.reset();
                        let Some(seen) = parse_xread(&v) else {
                            self.error("protocol");
                            warn!("wake: unexpected XREAD answer");
                            conn = None;
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        };
                        let now = Instant::now();
                        for (stream, last) in seen {
                            for key in cursors.advance(&stream, last) {
                                if throttle.admit(&key, now) {
                                    self.fire(&key);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.error(if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() { "unreachable" } else { "redis" });
                        conn = None;
                        let d = backoff.next_delay();
                        debug!(error = %redis_message(&e), retry_in = ?d, "wake: XREAD failed");
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = notify.notified() => {}
                        }
                    }
                },
                _ = notify.notified() => {
                    // The set changed: the blocked read is abandoned with its connection.
                    conn = None;
                    not_streams.clear();
                    checked.clear();
                }
            }
        }
    }
}

/// A Redis error in words, without anything from the URL.
fn redis_message(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ if e.is_connection_refusal() => "connection refused".into(),
        _ if e.is_timeout() => "timed out".into(),
        _ if e.is_connection_dropped() => "connection dropped".into(),
        _ => "I/O error".into(),
    }
}

/// The read position per stream and which pools each stream wakes.
#[derive(Debug, Default)]
pub struct Cursors {
    streams: BTreeMap<String, (EntryId, BTreeSet<PoolKey>)>,
}

impl Cursors {
    /// Follows the registered pools: a new stream starts at the lowest `after` of its
    /// pools; a known one keeps its position unless a registration is further on.
    pub fn sync(&mut self, pools: &[(PoolKey, WakeTarget)]) {
        let mut next: BTreeMap<String, (EntryId, BTreeSet<PoolKey>)> = BTreeMap::new();
        for (k, t) in pools {
            for (stream, after) in &t.streams {
                let e = next
                    .entry(stream.clone())
                    .or_insert((*after, BTreeSet::new()));
                e.0 = e.0.min(*after);
                e.1.insert(k.clone());
            }
        }
        for (s, (id, _)) in next.iter_mut() {
            if let Some((old, _)) = self.streams.get(s) {
                *id = (*id).max(*old);
            }
        }
        self.streams = next;
    }

    /// The streams followed.
    pub fn streams(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    /// `(stream, id)` pairs of the next `XREAD`, without `skip`.
    pub fn xread_args(&self, skip: &BTreeSet<String>) -> Vec<(String, EntryId)> {
        self.streams
            .iter()
            .filter(|(s, _)| !skip.contains(*s))
            .map(|(s, (id, _))| (s.clone(), *id))
            .collect()
    }

    /// Entries up to `last` were seen in `stream`: the pools to wake (none when `last`
    /// is not past the position, e.g. a stale answer).
    pub fn advance(&mut self, stream: &str, last: EntryId) -> Vec<PoolKey> {
        match self.streams.get_mut(stream) {
            Some((id, pools)) if last > *id => {
                *id = last;
                pools.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// At most one wake per pool per [`MIN_WAKE_INTERVAL`]; a wake refused inside the
/// interval happens at its end.
#[derive(Debug, Default)]
pub struct Throttle {
    last: HashMap<PoolKey, Instant>,
    deferred: BTreeMap<PoolKey, Instant>,
}

impl Throttle {
    /// Whether to wake `key` now; if not, it is deferred to the end of its interval.
    pub fn admit(&mut self, key: &PoolKey, now: Instant) -> bool {
        match self.last.get(key) {
            Some(t) if now.saturating_duration_since(*t) < MIN_WAKE_INTERVAL => {
                self.deferred.insert(key.clone(), *t + MIN_WAKE_INTERVAL);
                false
            }
            _ => {
                self.last.insert(key.clone(), now);
                self.deferred.remove(key);
                // Keep the memory small: intervals long past mean nothing.
                self.last
                    .retain(|_, t| now.saturating_duration_since(*t) < MIN_WAKE_INTERVAL * 4);
                true
            }
        }
    }

    /// Deferred wakes whose time has come (recorded as wakes now).
    pub fn due(&mut self, now: Instant) -> Vec<PoolKey> {
        let due: Vec<PoolKey> = self
            .deferred
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.deferred.remove(k);
            self.last.insert(k.clone(), now);
        }
        due
    }

    /// How long to block: `max`, or less when a deferred wake is due sooner.
    pub fn wait(&self, now: Instant, max: Duration) -> Duration {
        self.deferred
            .values()
            .map(|at| at.saturating_duration_since(now))
            .min()
            .map(|d| d.clamp(Duration::from_millis(1), max))
            .unwrap_or(max)
    }
}

/// Reconnection back-off: 200 ms doubling to 30 s, with up to 20% jitter.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt (and one more failure counted).
    pub fn next_delay(&mut self) -> Duration {
        let base =
            Duration::from_millis(200u64 << self.failures.min(8)).min(Duration::from_secs(30));
        self.failures = self.failures.saturating_add(1);
        let jitter = base.as_millis() as u64 / 5;
        base + Duration::from_millis(if jitter > 0 {
            rand::random::<u64>() % jitter
        } else {
            0
        })
    }

    /// A success: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// The last id read per stream from an `XREAD` answer (RESP2 arrays or RESP3 maps);
/// `Some(empty)` on a timeout (nil), `None` on anything else.
pub fn parse_xread(v: &Value) -> Option<Vec<(String, EntryId)>> {
    let per_stream: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Some(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|it| match it {
                Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Value::Map(kvs) => kvs.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    let mut out = Vec::new();
    for (k, entries) in per_stream {
        let name = String::from_utf8_lossy(bytes(k)?).into_owned();
        let Value::Array(entries) = entries else {
            return None;
        };
        let mut last: Option<EntryId> = None;
        for e in entries {
            let Value::Array(parts) = e else { return None };
            let id = EntryId::parse(bytes(parts.first()?)?)?;
            last = Some(last.map_or(id, |l| l.max(id)));
        }
        if let Some(l) = last {
            out.push((name, l));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> PoolKey {
        ("ns".into(), n.into())
    }

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    fn target(url: &str, stream: &str, after: EntryId) -> WakeTarget {
        WakeTarget {
            target: Target::new(url, &workpool_worker::target::Tls::none()).expect("target"),
            streams: vec![(stream.into(), after)],
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_resp3_and_timeouts() {
        let entry = |i: &str| Value::Array(vec![bulk(i), Value::Array(vec![bulk("f"), bulk("v")])]);
        let v = Value::Array(vec![
            Value::Array(vec![
                bulk("a"),
                Value::Array(vec![entry("5-0"), entry("7-1")]),
            ]),
            Value::Array(vec![bulk("b"), Value::Array(vec![entry("3-2")])]),
        ]);
        assert_eq!(
            parse_xread(&v),
            Some(vec![("a".into(), id(7, 1)), ("b".into(), id(3, 2))])
        );
        let m = Value::Map(vec![(bulk("a"), Value::Array(vec![entry("9-0")]))]);
        assert_eq!(parse_xread(&m), Some(vec![("a".into(), id(9, 0))]));
        assert_eq!(parse_xread(&Value::Nil), Some(vec![]));
        // Nonsense is refused, never a panic.
        assert_eq!(parse_xread(&Value::Int(3)), None);
        assert_eq!(parse_xread(&Value::Array(vec![Value::Int(1)])), None);
        let bad_id = Value::Array(vec![Value::Array(vec![
            bulk("a"),
            Value::Array(vec![entry("x-y")]),
        ])]);
        assert_eq!(parse_xread(&bad_id), None);
        let no_fields = Value::Array(vec![Value::Array(vec![
            bulk("a"),
            Value::Array(vec![Value::Array(vec![])]),
        ])]);
        assert_eq!(parse_xread(&no_fields), None);
    }

    #[test]
    fn cursors_start_at_the_lowest_registration_and_only_move_forward() {
        let mut c = Cursors::default();
        c.sync(&[
            (key("a"), target("redis://u", "s", id(5, 0))),
            (key("b"), target("redis://u", "s", id(3, 0))),
            (key("c"), target("redis://u", "t", EntryId::ZERO)),
        ]);
        assert_eq!(
            c.xread_args(&BTreeSet::new()),
            vec![("s".into(), id(3, 0)), ("t".into(), EntryId::ZERO)]
        );
        // An entry wakes every pool of its stream once.
        assert_eq!(c.advance("s", id(4, 0)), vec![key("a"), key("b")]);
        assert!(
            c.advance("s", id(4, 0)).is_empty(),
            "a stale answer wakes nobody"
        );
        assert!(c.advance("nope", id(9, 0)).is_empty());
        // A later sync keeps the position; a registration further on moves it.
        c.sync(&[
            (key("a"), target("redis://u", "s", id(1, 0))),
            (key("c"), target("redis://u", "t", id(8, 0))),
        ]);
        let skip: BTreeSet<String> = ["t".to_string()].into();
        assert_eq!(c.xread_args(&skip), vec![("s".into(), id(4, 0))]);
        assert_eq!(c.xread_args(&BTreeSet::new())[1], ("t".into(), id(8, 0)));
        // A stream no pool waits on is forgotten.
        c.sync(&[(key("c"), target("redis://u", "t", id(8, 0)))]);
        assert_eq!(c.streams(), vec!["t".to_string()]);
    }

    #[test]
    fn throttle_wakes_at_most_once_per_interval_and_defers_the_rest() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert!(t.admit(&key("a"), t0));
        assert!(t.admit(&key("b"), t0), "pools are throttled separately");
        assert!(!t.admit(&key("a"), t0 + Duration::from_millis(300)));
        assert_eq!(
            t.wait(t0 + Duration::from_millis(300), BLOCK),
            Duration::from_millis(700)
        );
        assert!(t.due(t0 + Duration::from_millis(900)).is_empty());
        assert_eq!(t.due(t0 + MIN_WAKE_INTERVAL), vec![key("a")]);
        assert!(
            t.due(t0 + MIN_WAKE_INTERVAL * 2).is_empty(),
            "deferred once"
        );
        assert_eq!(t.wait(t0, BLOCK), BLOCK);
        assert!(t.admit(&key("a"), t0 + MIN_WAKE_INTERVAL * 3));
    }

    #[test]
    fn backoff_grows_to_its_bound_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(200) && first < Duration::from_millis(250));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last >= Duration::from_millis(200), "never a hot loop");
        }
        assert!(last >= Duration::from_secs(30) && last <= Duration::from_secs(36));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(250));
    }

    #[tokio::test]
    async fn registration_changes_only_on_real_changes() {
        // No Redis at this URL: the task backs off; registrations are what is tested.
        let (w, _rx) = Wake::new(None, true);
        let url = "redis://127.0.0.1:1".to_string();
        w.watch(&key("a"), Some(target(&url, "s", id(5, 0))));
        w.watch(&key("a"), Some(target(&url, "s", id(2, 0))));
        assert_eq!(
            w.state().pools[&key("a")].streams[0].1,
            id(5, 0),
            "never backwards"
        );
        w.watch(&key("b"), Some(target(&url, "t", EntryId::ZERO)));
        assert_eq!(w.watched(), vec![key("a"), key("b")]);
        assert_eq!(w.state().watchers.len(), 1, "one task per URL");
        w.watch(&key("a"), None);
        w.watch(&key("b"), None);
        assert!(w.watched().is_empty());
        assert!(!w.take_woken(&key("a")));
        let off = Wake::disabled();
        off.watch(&key("a"), Some(target(&url, "s", EntryId::ZERO)));
        assert!(off.watched().is_empty() && !off.enabled());
    }
}
