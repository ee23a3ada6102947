//! A pool's stats (docs/protocol.md section 7): one atomic snapshot per partition with
//! the canonical `stats.lua` (the worker's and operator's too), summed over partitions.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use crate::error::protocol;
use crate::reply::{as_bytes, as_id, as_int, as_string, into_array};
use crate::{EntryId, Error, Layout, Result};

/// One consumer of the group (`XINFO CONSUMERS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerInfo {
    /// Consumer name (the worker's `--consumer`, the pod name in Kubernetes).
    pub name: String,
    /// Entries it holds (delivered, not yet acknowledged).
    pub pending: u64,
    /// Milliseconds since its last interaction with the group (read, claim, ack).
    pub idle_ms: u64,
    /// Milliseconds since its last successful read or claim (Redis >= 7.2 only).
    pub inactive_ms: Option<i64>,
}

/// Where a consumer stands in the pool's drain hash ([`Layout::draining_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// The operator asked the consumer to stop taking tasks.
    Requested,
    /// The worker has stopped reading (it may still hold tasks it is finishing).
    Stopped,
}

impl DrainState {
    /// The value stored in the drain hash.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Requested => "requested",
            DrainState::Stopped => "stopped",
        }
    }

    /// Reads a value of the drain hash (`None` for anything else).
    pub fn parse(b: &[u8]) -> Option<DrainState> {
        match b {
            b"requested" => Some(DrainState::Requested),
            b"stopped" => Some(DrainState::Stopped),
            _ => None,
        }
    }
}

/// A snapshot of the queue, read atomically (one Lua script).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Stream name.
    pub stream: String,
    /// Group name.
    pub group: String,
    /// Whether the stream exists.
    pub stream_exists: bool,
    /// Whether the consumer group exists.
    pub group_exists: bool,
    /// `XLEN` of the stream.
    pub stream_length: u64,
    /// Entries not yet delivered to the group (counted: the entries after the group's
    /// last delivered id). When the group does not exist yet this is the whole stream (the
    /// group is created at id 0 and will deliver all of it).
    pub lag: u64,
    /// True when Redis reported no `lag` or a wrong one (after `XDEL`, `XTRIM` or
    /// `XADD MAXLEN`; Redis 7.0) and the counted number differs from or replaces it.
    pub lag_computed: bool,
    /// True when the stream was too long on both sides of the last delivered id to count
    /// (more than [`STATS_COUNT_LIMIT_CHUNKS`] thousand entries each): `lag` is then
    /// Redis's own number, or an upper bound when Redis has none.
    #[serde(default)]
    pub lag_estimated: bool,
    /// Entries delivered and not yet acknowledged (the group's pending list, as Redis
    /// counts it).
    pub pending: u64,
    /// Pending entries whose stream entries no longer exist (trimmed or deleted): nothing
    /// to run, so not part of the backlog. Workers drop them when they reclaim them.
    #[serde(default)]
    pub pending_deleted: u64,
    /// `lag + pending - pending_deleted`: the work waiting or in flight; what the
    /// autoscaler scales on.
    pub backlog: u64,
    /// `XLEN` of the dead-letter stream.
    pub dead_letters: u64,
    /// The group's last delivered id.
    pub last_delivered_id: Option<EntryId>,
    /// The oldest pending entry.
    pub oldest_pending_id: Option<EntryId>,
    /// Age in milliseconds of the oldest pending entry (Redis server time minus the
    /// millisecond part of its id, i.e. since it was enqueued).
    pub oldest_pending_age_ms: Option<u64>,
    /// The group's consumers.
    pub consumers: Vec<ConsumerInfo>,
    /// Per partition, the stats of each (index = partition), for a pool's stats
    /// ([`read_pool`]); the fields above are then the sums. Empty for one partition's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<QueueStats>,
    /// Consumers told to stop taking tasks ([`Layout::draining_key`]), read in the same
    /// snapshot as their pending counts: a consumer `Stopped` and holding nothing will
    /// never take another task until its field is removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub draining: BTreeMap<String, DrainState>,
}

impl QueueStats {
    /// [`QueueStats::oldest_pending_age_ms`] as a `Duration`.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending_age_ms.map(Duration::from_millis)
    }
}

/// Stats snapshot. KEYS: stream, dead-letter stream, drain hash. ARGV: group, counting
/// limit (chunks of 1000 entries per side).
/// Returns {sec, usec, dead, exists, len, group_found, pending, lag, computed,
/// last_delivered, oldest_pending|'', consumers, estimated, pending_present,
/// drain hash as HGETALL}.
///
/// The lag is counted, never taken from Redis on trust: Redis 7.0 reports a non-nil but
/// wrong `lag` after `XTRIM`/`XADD MAXLEN` (and nil after `XDEL`). Entries `<=
/// last-delivered-id` and entries after it are counted alternately in chunks of 1000 and
/// the first side to end gives both numbers, so the cost is bounded by the smaller side
/// (in this protocol the entries up to the last delivered id are the pending ones, which
/// are few). Only when both sides exceed the limit is Redis's own number (or the upper
/// bound `len - counted`) used, and the result marked estimated.
static STATS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/stats.lua")));

/// Chunks of 1000 entries counted on each side of the last delivered id before `stats`
/// gives up counting and reports an estimate.
pub const STATS_COUNT_LIMIT_CHUNKS: u32 = 50;

/// One partition's snapshot, read atomically: `stream`, its dead-letter stream `dead`,
/// `drain_key` (the pool's drain hash for partition 0, the stream itself for the others,
/// see [`Layout::stats_drain_key`]) and the group. `Err(NOGROUP)` never happens: a
/// missing group reads as `group_exists: false`.
pub async fn read_partition<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    dead: &str,
    drain_key: &str,
    group: &str,
) -> Result<QueueStats> {
    let v: Value = STATS
        .key(stream)
        .key(dead)
        .key(drain_key)
        .arg(group)
        .arg(STATS_COUNT_LIMIT_CHUNKS)
        .invoke_async(conn)
        .await?;
    let a = into_array(v).ok_or_else(|| protocol("stats script", "not an array"))?;
    if a.len() != 15 {
        return Err(protocol("stats script", format!("{} elements", a.len())));
    }
    let int = |i: usize| -> Result<i64> {
        as_int(&a[i]).ok_or_else(|| protocol("stats script", format!("element {i}")))
    };
    let now_ms = (int(0)? as u64) * 1000 + (int(1)? as u64) / 1000;
    let mut st = QueueStats {
        stream: stream.to_string(),
        group: group.to_string(),
        dead_letters: int(2)?.max(0) as u64,
        stream_exists: int(3)? == 1,
        stream_length: int(4)?.max(0) as u64,
        group_exists: int(5)? == 1,
        pending: int(6)?.max(0) as u64,
        lag: int(7)?.max(0) as u64,
        lag_computed: int(8)? == 1,
        last_delivered_id: as_id(&a[9]),
        oldest_pending_id: as_id(&a[10]),
        lag_estimated: int(12)? == 1,
        ..Default::default()
    };
    let present = (int(13)?.max(0) as u64).min(st.pending);
    st.pending_deleted = st.pending - present;
    st.backlog = st.lag + present;
    st.oldest_pending_age_ms = st.oldest_pending_id.map(|id| now_ms.saturating_sub(id.ms));
    let mut a = a;
    st.draining = parse_drain_hash(a.pop().unwrap_or(Value::Nil));
    if st.group_exists {
        a.truncate(12);
        st.consumers = parse_consumers(a.pop().unwrap_or(Value::Nil))?;
    }
    Ok(st)
}

/// Stats of every partition of `layout` and their sums (see [`sum`]).
///
/// Partition 0 (with the drain hash, in one script) is read first, the others after
/// it, concurrently (on Cluster each from its node). A consumer that said `stopped`
/// takes no task in any partition until its field goes, so a snapshot showing it
/// `stopped` and holding nothing anywhere means it holds nothing from then on, even
/// though the partitions are not read in one atomic step.
pub async fn read_pool<C: ConnectionLike + Send + Clone>(
    conn: &C,
    layout: &Layout,
) -> Result<QueueStats> {
    let read = |i: usize| {
        let mut c = conn.clone();
        async move {
            read_partition(
                &mut c,
                &layout.partition_stream(i),
                &layout.dead_letter_stream(i),
                &layout.stats_drain_key(i),
                layout.group(),
            )
            .await
        }
    };
    if layout.partitions() == 0 {
        return Err(Error::InvalidArgument(
            "a pool has at least one partition".into(),
        ));
    }
    let first = read(0).await?;
    let rest = futures::future::try_join_all((1..layout.partitions()).map(read)).await?;
    let mut parts = Vec::with_capacity(layout.partitions());
    parts.push(first);
    parts.extend(rest);
    Ok(sum(layout, parts))
}

/// The pool's stats from its partitions': the top-level fields add up the partitions
/// (`oldest_pending_*` is the oldest of all; consumers are merged by name, pending
/// summed, idle the least), `draining` is the pool's drain hash (read with partition 0)
/// and `partitions` holds each partition's own stats.
pub fn sum(layout: &Layout, mut parts: Vec<QueueStats>) -> QueueStats {
    let mut st = QueueStats {
        stream: layout.stream().to_string(),
        group: layout.group().to_string(),
        stream_exists: parts.iter().any(|p| p.stream_exists),
        group_exists: !parts.is_empty() && parts.iter().all(|p| p.group_exists),
        ..Default::default()
    };
    let mut consumers: Vec<ConsumerInfo> = Vec::new();
    for p in &parts {
        st.stream_length += p.stream_length;
        st.lag += p.lag;
        st.lag_computed |= p.lag_computed;
        st.lag_estimated |= p.lag_estimated;
        st.pending += p.pending;
        st.pending_deleted += p.pending_deleted;
        st.backlog += p.backlog;
        st.dead_letters += p.dead_letters;
        if let Some(age) = p.oldest_pending_age_ms
            && st.oldest_pending_age_ms.is_none_or(|a| age > a)
        {
            st.oldest_pending_age_ms = Some(age);
            st.oldest_pending_id = p.oldest_pending_id;
        }
        for c in &p.consumers {
            match consumers.iter_mut().find(|x| x.name == c.name) {
                Some(x) => {
                    x.pending += c.pending;
                    x.idle_ms = x.idle_ms.min(c.idle_ms);
                    x.inactive_ms = match (x.inactive_ms, c.inactive_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                None => consumers.push(c.clone()),
            }
        }
    }
    // One partition: its own id (what wake from zero of a one-partition pool reads).
    if parts.len() == 1 {
        st.last_delivered_id = parts[0].last_delivered_id;
        st.stream = parts[0].stream.clone();
    }
    st.consumers = consumers;
    // The pool's drain hash is read with partition 0 only (the others leave it out).
    if let Some(first) = parts.first_mut() {
        st.draining = std::mem::take(&mut first.draining);
    }
    st.partitions = parts;
    st
}

/// `HGETALL` of the drain hash; values other than the two states are left out (a hash
/// someone else wrote under that name must not stop the pool).
fn parse_drain_hash(v: Value) -> BTreeMap<String, DrainState> {
    let mut out = BTreeMap::new();
    let Some(flat) = into_array(v) else {
        return out;
    };
    let mut it = flat.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(name), Some(state)) = (as_string(k), as_bytes(v).and_then(DrainState::parse)) {
            out.insert(name, state);
        }
    }
    out
}

/// The rows of `XINFO CONSUMERS`.
pub fn parse_consumers(v: Value) -> Result<Vec<ConsumerInfo>> {
    let rows = into_array(v).ok_or_else(|| protocol("XINFO CONSUMERS", "not an array"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let flat = into_array(r).ok_or_else(|| protocol("XINFO CONSUMERS", "bad row"))?;
        let mut c = ConsumerInfo {
            name: String::new(),
            pending: 0,
            idle_ms: 0,
            inactive_ms: None,
        };
        let mut it = flat.iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match as_bytes(k) {
                Some(b"name") => c.name = as_string(v).unwrap_or_default(),
                Some(b"pending") => c.pending = as_int(v).unwrap_or(0).max(0) as u64,
                Some(b"idle") => c.idle_ms = as_int(v).unwrap_or(0).max(0) as u64,
                Some(b"inactive") => c.inactive_ms = as_int(v),
                _ => {}
            }
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_consumers_reads_fields() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"name".to_vec()),
            Value::BulkString(b"w1".to_vec()),
            Value::BulkString(b"pending".to_vec()),
            Value::Int(3),
            Value::BulkString(b"idle".to_vec()),
            Value::Int(1500),
        ])]);
        let c = parse_consumers(v).expect("parses");
        assert_eq!(
            c,
            vec![ConsumerInfo {
                name: "w1".into(),
                pending: 3,
                idle_ms: 1500,
                inactive_ms: None
            }]
        );
    }
}
