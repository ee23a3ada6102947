//! Submitting tasks (docs/protocol.md sections 3 and 4): entries, partition choice,
//! pipelines, deduplication and durable submit (`WAIT`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

use crate::error::protocol;
use crate::reply::{as_id, as_int, entry_ids, into_array};
use crate::{EntryId, Error, Layout, Result};

/// The field that carries a task's payload in a stream entry.
pub const PAYLOAD_FIELD: &str = "payload";
/// The most bytes of a producer's task id.
pub const MAX_TASK_ID_BYTES: usize = 512;
/// The default deduplication window (docs/protocol.md 4.3).
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Commands per pipeline.
pub const PIPELINE_CHUNK: usize = 1000;

/// The canonical `submit_dedup.lua` (docs/protocol.md 4.3). Sent with `EVAL` inside
/// pipelines: its keys route it on Cluster, and no `NOSCRIPT` can split a pipeline.
pub const SUBMIT_DEDUP_SOURCE: &str = include_str!("../scripts/submit_dedup.lua");

/// A task to enqueue.
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    /// The payload (usually JSON).
    pub payload: &'a [u8],
    /// An optional application task id, stored in the `id` field.
    pub id: Option<&'a str>,
    /// An optional attempt number, stored in the `attempt` field.
    pub attempt: Option<u32>,
}

impl<'a> NewTask<'a> {
    /// A task with just a payload.
    pub fn new(payload: &'a [u8]) -> Self {
        NewTask {
            payload,
            id: None,
            attempt: None,
        }
    }
}

/// One `XADD` per task, in order, in a pipeline.
pub fn xadd_pipeline(stream: &str, tasks: &[NewTask<'_>]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for t in tasks {
        let c = pipe
            .cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(PAYLOAD_FIELD)
            .arg(t.payload);
        if let Some(id) = t.id {
            c.arg("id").arg(id);
        }
        if let Some(a) = t.attempt {
            c.arg("attempt").arg(a);
        }
    }
    pipe
}

/// Enqueues tasks on `stream` in one pipeline; returns their entry ids in order.
pub async fn enqueue<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    tasks: &[NewTask<'_>],
) -> Result<Vec<EntryId>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let replies: Vec<Value> = xadd_pipeline(stream, tasks).query_async(conn).await?;
    entry_ids(&replies)
}

/// Enqueues tasks durably: the `XADD`s and then `WAIT min_replicas timeout` in one
/// pipeline on one connection (on Cluster: to the node of the stream's slot), so the
/// `WAIT` counts exactly the replicas that have these writes. Returns the entry ids and
/// how many replicas acknowledged them (within `timeout`); the tasks are confirmed when
/// that is at least `min_replicas`. A failover can lose unconfirmed tasks (the primary
/// acknowledged them before any replica had them); a confirmed task is on at least
/// `min_replicas` replicas, and Sentinel or Cluster promote the most up-to-date replica.
pub async fn enqueue_wait<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    tasks: &[NewTask<'_>],
    min_replicas: u32,
    timeout: Duration,
) -> Result<(Vec<EntryId>, u64)> {
    if tasks.is_empty() {
        return Ok((Vec::new(), u64::from(min_replicas)));
    }
    let mut pipe = xadd_pipeline(stream, tasks);
    // WAIT 0 would block forever: at least 1 ms.
    pipe.cmd("WAIT")
        .arg(min_replicas)
        .arg(timeout.as_millis().max(1) as u64);
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let acked = replies
        .pop()
        .as_ref()
        .and_then(as_int)
        .ok_or_else(|| protocol("WAIT", "reply is not an integer"))?;
    Ok((entry_ids(&replies)?, acked.max(0) as u64))
}

/// A task for [`crate::Pool::submit`]: the payload and its options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Task {
    /// The payload bytes (usually JSON; see [`Task::json`]).
    pub payload: Vec<u8>,
    /// The producer's task id (1 to 512 bytes, not of the form `<digits>-<digits>`).
    pub id: Option<String>,
    /// The producer's own attempt counter, >= 1.
    pub attempt: Option<u32>,
    /// The partition key: CRC16-XMODEM(key) mod N.
    pub key: Option<Vec<u8>>,
    /// An explicit partition (wins over the key).
    pub partition: Option<usize>,
    /// Deduplication on, with this window (needs an id).
    pub dedup: Option<Duration>,
}

impl Task {
    /// A task with these payload bytes (a string's UTF-8 bytes).
    pub fn new(payload: impl Into<Vec<u8>>) -> Task {
        Task {
            payload: payload.into(),
            ..Task::default()
        }
    }

    /// A task whose payload is `value` as compact JSON (the encoding every client uses).
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Task> {
        serde_json::to_vec(value).map(Task::new).map_err(|e| {
            Error::InvalidArgument(format!("the payload is not JSON-serializable: {e}"))
        })
    }

    /// With a producer task id.
    pub fn with_id(mut self, id: impl Into<String>) -> Task {
        self.id = Some(id.into());
        self
    }

    /// With an attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> Task {
        self.attempt = Some(attempt);
        self
    }

    /// With a partition key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Task {
        self.key = Some(key.into());
        self
    }

    /// Into this partition.
    pub fn in_partition(mut self, partition: usize) -> Task {
        self.partition = Some(partition);
        self
    }

    /// With deduplication over `window` (needs an id; [`DEFAULT_DEDUP_WINDOW`] is 24 h).
    pub fn with_dedup(mut self, window: Duration) -> Task {
        self.dedup = Some(window);
        self
    }
}

/// Checks a producer task id (docs/protocol.md 3).
pub fn check_task_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_TASK_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a task id has 1 to {MAX_TASK_ID_BYTES} bytes, not {}",
            id.len()
        )));
    }
    if let Some((a, b)) = id.split_once('-')
        && !a.is_empty()
        && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(Error::InvalidArgument(format!(
            "task id {id:?} has the form of a stream entry id (<digits>-<digits>) and could equal another task's"
        )));
    }
    Ok(())
}

/// A producer's round-robin counter (docs/protocol.md 4.1).
#[derive(Debug)]
pub struct RoundRobin {
    partitions: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Starting at `start` (a random partition when `None`).
    pub fn new(partitions: usize, start: Option<usize>) -> Result<RoundRobin> {
        let partitions = partitions.max(1);
        let start = start.unwrap_or_else(|| rand::random_range(0..partitions));
        if start >= partitions {
            return Err(Error::InvalidArgument(format!(
                "round-robin start {start} is not a partition (0..{})",
                partitions - 1
            )));
        }
        Ok(RoundRobin {
            partitions,
            next: AtomicUsize::new(start),
        })
    }

    /// The next partition.
    pub fn take(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.partitions
    }
}

/// A validated task with its partition and command (nothing sent yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The partition it goes to.
    pub partition: usize,
    /// The producer's task id, if any.
    pub id: Option<String>,
    /// The entry's fields in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// The dedup key and window in ms, with deduplication.
    pub dedup: Option<(String, u64)>,
    stream: String,
}

impl Planned {
    /// The logical command (docs/protocol.md 4.2, 4.3): `XADD P_p * fields...` or
    /// `EVAL @submit_dedup.lua 2 P_p <dedup key> <window ms> fields...`.
    pub fn logical_command(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = match &self.dedup {
            None => vec![
                b"XADD".to_vec(),
                self.stream.clone().into_bytes(),
                b"*".to_vec(),
            ],
            Some((key, ms)) => vec![
                b"EVAL".to_vec(),
                b"@submit_dedup.lua".to_vec(),
                b"2".to_vec(),
                self.stream.clone().into_bytes(),
                key.clone().into_bytes(),
                ms.to_string().into_bytes(),
            ],
        };
        for (k, v) in &self.fields {
            out.push(k.clone());
            out.push(v.clone());
        }
        out
    }

    fn add_to(&self, pipe: &mut redis::Pipeline) {
        match &self.dedup {
            None => {
                let c = pipe.cmd("XADD").arg(&self.stream).arg("*");
                for (k, v) in &self.fields {
                    c.arg(k).arg(v);
                }
            }
            Some((key, ms)) => {
                let c = pipe
                    .cmd("EVAL")
                    .arg(SUBMIT_DEDUP_SOURCE)
                    .arg(2)
                    .arg(&self.stream)
                    .arg(key)
                    .arg(*ms);
                for (k, v) in &self.fields {
                    c.arg(k).arg(v);
                }
            }
        }
    }
}

/// Validates `task` and chooses its partition (docs/protocol.md 4.1).
pub fn plan(layout: &Layout, task: &Task, rr: &RoundRobin) -> Result<Planned> {
    if let Some(id) = &task.id {
        check_task_id(id)?;
    }
    if task.attempt == Some(0) {
        return Err(Error::InvalidArgument("attempt must be >= 1, not 0".into()));
    }
    let window_ms = match task.dedup {
        None => None,
        Some(w) => {
            if task.id.is_none() {
                return Err(Error::InvalidArgument(
                    "deduplication needs a task id".into(),
                ));
            }
            let ms = w.as_millis();
            if ms < 1 {
                return Err(Error::InvalidArgument(format!(
                    "the dedup window must be at least 1 ms, not {w:?}"
                )));
            }
            Some(ms.min(u128::from(u64::MAX)) as u64)
        }
    };
    let n = layout.partitions();
    let partition = if let Some(p) = task.partition {
        if p >= n {
            return Err(Error::InvalidArgument(format!(
                "partition {p} does not exist (the pool has {n})"
            )));
        }
        p
    } else if let Some(k) = &task.key {
        layout.partition_for_key(k)
    } else if let (Some(id), Some(_)) = (&task.id, window_ms) {
        layout.partition_for_key(id.as_bytes())
    } else {
        rr.take()
    };
    let mut fields = vec![(PAYLOAD_FIELD.as_bytes().to_vec(), task.payload.clone())];
    if let Some(id) = &task.id {
        fields.push((b"id".to_vec(), id.clone().into_bytes()));
    }
    if let Some(a) = task.attempt {
        fields.push((b"attempt".to_vec(), a.to_string().into_bytes()));
    }
    let stream = layout.partition_stream(partition);
    let dedup = match (&task.id, window_ms) {
        (Some(id), Some(ms)) => Some((format!("{stream}:dedup:{id}"), ms)),
        _ => None,
    };
    Ok(Planned {
        partition,
        id: task.id.clone(),
        fields,
        dedup,
        stream,
    })
}

/// A submitted task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Submitted {
    /// The partition it went to.
    pub partition: usize,
    /// Its entry id in that partition's stream (with deduplication and `duplicate`: the
    /// earlier task's).
    pub entry_id: EntryId,
    /// Its task id: the producer's id, else the entry id.
    pub task_id: String,
    /// Deduplication found a task with this id in the window: nothing was added.
    pub duplicate: bool,
    /// With durable submit: whether enough replicas acknowledged it.
    pub confirmed: Option<bool>,
}

/// Durable submit (docs/protocol.md 4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Replicas that must have the tasks (`WAIT` R).
    pub min_replicas: u32,
    /// How long `WAIT` waits.
    pub timeout: Duration,
}

/// A batch that failed part way: which tasks got an entry id (input order).
#[derive(Debug, thiserror::Error)]
#[error("submit failed after {} of {} tasks: {source}", .submitted.iter().filter(|s| s.is_some()).count(), .submitted.len())]
pub struct SubmitError {
    /// Per input task: what was submitted, `None` for a task that may not have been.
    pub submitted: Vec<Option<Submitted>>,
    /// Why.
    #[source]
    pub source: Error,
}

/// Sends the planned tasks of one partition in one pipeline (ending with `WAIT` when
/// durable, on the same connection) and returns one `Submitted` per task.
pub(crate) async fn send_chunk<C: ConnectionLike + Send>(
    conn: &mut C,
    planned: &[&Planned],
    durable: Option<Durable>,
) -> Result<Vec<Submitted>> {
    let mut pipe = redis::pipe();
    for p in planned {
        p.add_to(&mut pipe);
    }
    if let Some(d) = durable {
        pipe.cmd("WAIT")
            .arg(d.min_replicas)
            .arg(d.timeout.as_millis().max(1) as u64);
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let confirmed = match durable {
        None => None,
        Some(d) => {
            let acked = replies
                .pop()
                .as_ref()
                .and_then(as_int)
                .ok_or_else(|| protocol("WAIT", "reply is not an integer"))?;
            Some(acked >= i64::from(d.min_replicas))
        }
    };
    if replies.len() != planned.len() {
        return Err(protocol(
            "submit pipeline",
            format!("{} replies for {} tasks", replies.len(), planned.len()),
        ));
    }
    let mut out = Vec::with_capacity(planned.len());
    for (p, r) in planned.iter().zip(replies) {
        let (entry_id, duplicate) = if p.dedup.is_some() {
            let a = into_array(r).ok_or_else(|| protocol("submit_dedup.lua", "not an array"))?;
            let added = a.first().and_then(as_int);
            let id = a.get(1).and_then(as_id);
            match (added, id) {
                (Some(added), Some(id)) => (id, added == 0),
                _ => return Err(protocol("submit_dedup.lua", "expected {0|1, entry id}")),
            }
        } else {
            (
                as_id(&r).ok_or_else(|| protocol("XADD", "reply is not an entry id"))?,
                false,
            )
        };
        out.push(Submitted {
            partition: p.partition,
            entry_id,
            task_id: p.id.clone().unwrap_or_else(|| entry_id.to_string()),
            duplicate,
            confirmed,
        });
    }
    Ok(out)
}
