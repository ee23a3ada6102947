//! Task results (docs/protocol.md section 8): the record a worker stores with results on,
//! read back, waited for without polling, and a task's status.

use std::time::{Duration, Instant};

use redis::Value;

use crate::reply::{into_array, into_bytes};
use crate::{EntryId, Error, Result};

/// The longest single block on a task's notification list: a safety net (a waiter that
/// missed its push looks again), not a poll; a healthy wait wakes on the push.
pub const WAIT_SLICE: Duration = Duration::from_secs(5);

/// A task's outcome as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskResult {
    /// `done` (the handler succeeded) or `dead` (dead-lettered).
    pub state: String,
    /// The record's protocol version (`v`).
    pub version: Option<u32>,
    /// The task id.
    pub task_id: Option<String>,
    /// The entry id of the run that ended it.
    pub entry_id: Option<String>,
    /// Runs, this one included.
    pub deliveries: Option<u64>,
    /// The worker that ended it.
    pub consumer: Option<String>,
    /// The last run's start, ms since the epoch.
    pub started_ms: Option<u64>,
    /// The last run's end, ms since the epoch.
    pub finished_ms: Option<u64>,
    /// `done`: the handler's output, up to the worker's limit.
    pub output: Option<Vec<u8>>,
    /// The output was cut to the limit.
    pub output_truncated: bool,
    /// `dead`: the dead letter's error.
    pub error: Option<String>,
    /// `dead`: the dead-letter entry id.
    pub dead_letter_id: Option<String>,
    /// Fields this version does not know, kept in order.
    pub extra: Vec<(String, Vec<u8>)>,
}

impl TaskResult {
    /// Reads an `HGETALL` reply; `None` for an empty hash (no result).
    pub fn parse(v: Value) -> Result<Option<TaskResult>> {
        let flat = into_array(v).ok_or_else(|| Error::unexpected("HGETALL", "not a hash"))?;
        if flat.is_empty() {
            return Ok(None);
        }
        let mut r = TaskResult::default();
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let k = String::from_utf8_lossy(&into_bytes(k).unwrap_or_default()).into_owned();
            let v = into_bytes(v).unwrap_or_default();
            let text = || String::from_utf8_lossy(&v).into_owned();
            match k.as_str() {
                "state" => r.state = text(),
                "v" => r.version = text().parse().ok(),
                "task_id" => r.task_id = Some(text()),
                "entry_id" => r.entry_id = Some(text()),
                "deliveries" => r.deliveries = text().parse().ok(),
                "consumer" => r.consumer = Some(text()),
                "started_ms" => r.started_ms = text().parse().ok(),
                "finished_ms" => r.finished_ms = text().parse().ok(),
                "output" => r.output = Some(v),
                "output_truncated" => r.output_truncated = v == b"1",
                "error" => r.error = Some(text()),
                "dead_letter_id" => r.dead_letter_id = Some(text()),
                _ => r.extra.push((k, v)),
            }
        }
        Ok(Some(r))
    }

    /// True for `done`.
    pub fn ok(&self) -> bool {
        self.state == "done"
    }
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// In its stream, not delivered yet.
    Queued,
    /// Delivered to `consumer` and not acknowledged, `deliveries` runs so far.
    Running {
        /// The worker holding it.
        consumer: String,
        /// Deliveries so far.
        deliveries: u64,
    },
    /// Finished: the record (`done` or `dead`; needs results on).
    Finished(Box<TaskResult>),
    /// Not in its stream and no result: finished with results off, expired, or never
    /// submitted.
    Unknown,
}

/// `wait_for` ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("no result for task {task_id:?} within {timeout:?}")]
pub struct WaitTimeout {
    /// The task.
    pub task_id: String,
    /// How long it waited.
    pub timeout: Duration,
}

/// The key of partition stream `stream`'s result record of `task_id`.
pub fn result_key(stream: &str, task_id: &str) -> String {
    format!("{stream}:result:{task_id}")
}

/// The key of partition stream `stream`'s notification list of `task_id`.
pub fn notify_key(stream: &str, task_id: &str) -> String {
    format!("{stream}:notify:{task_id}")
}

/// How long the next block may last: the time left, at most [`WAIT_SLICE`], at least 1 ms
/// (a zero timeout would block forever).
pub(crate) fn next_block(deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then(|| left.min(WAIT_SLICE).max(Duration::from_millis(1)))
}

/// Parses one `XPENDING <stream> <group> id id 1` row: (consumer, deliveries).
pub(crate) fn pending_row(v: Value) -> Option<(String, u64)> {
    let row = into_array(v)?.into_iter().next()?;
    let r = into_array(row)?;
    let consumer = String::from_utf8_lossy(&into_bytes(r.get(1)?.clone())?).into_owned();
    let deliveries = crate::reply::as_int(r.get(3)?)?.max(0) as u64;
    Some((consumer, deliveries))
}

/// An entry id as the `XRANGE` bounds of exactly that entry.
pub(crate) fn exact(id: EntryId) -> String {
    id.to_string()
}
