//! The producer side of workpool queues (Redis Streams), following docs/protocol.md:
//! submit tasks (one or pipelined batches; producer task ids and deduplication;
//! partitions; durable `WAIT`), read a pool's stats, list, retry and purge dead letters,
//! read a task's result and status and wait for it (the worker records results with
//! `--results-ttl`).
//!
//! ```no_run
//! # async fn demo() -> workpool_client::Result<()> {
//! use workpool_client::{Layout, Pool, Task, target::Tls};
//! let pool = Pool::connect_url("redis://localhost:6379", &Tls::none(), Layout::new("thumbnails", "thumbnails")).await?;
//! let sub = pool.submit(Task::json(&serde_json::json!({"image": "a.png"}))?.with_id("order-42")).await?;
//! println!("{} in partition {}", sub.task_id, sub.partition);
//! let stats = pool.stats().await?;
//! # Ok(()) }
//! ```
//!
//! The worker (`workpool-worker`) builds on the shared parts: the key names
//! ([`Layout`]), the stats snapshot ([`stats`]), the `XADD` pipeline ([`submit`]),
//! connection targets ([`target`]), entry ids and errors. So `workpool-worker submit |
//! stats` and the operator read and write exactly what this crate does.
#![forbid(unsafe_code)]

pub mod dead_letters;
pub mod display;
mod error;
mod id;
mod keys;
mod pool;
pub mod reply;
pub mod results;
pub mod stats;
pub mod submit;
pub mod target;

pub use dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterRef, RetryOutcome};
pub use error::{Error, Result};
pub use id::EntryId;
pub use keys::{Layout, MAX_PARTITIONS, crc16_xmodem, key_slot};
pub use pool::{Pool, RESPONSE_TIMEOUT, WaitError};
pub use results::{TaskResult, TaskStatus, WaitTimeout};
pub use stats::{ConsumerInfo, DrainState, QueueStats, STATS_COUNT_LIMIT_CHUNKS};
pub use submit::{DEFAULT_DEDUP_WINDOW, Durable, NewTask, SubmitError, Submitted, Task};

/// The version of docs/protocol.md this crate implements, and its revision.
pub const PROTOCOL_VERSION: u32 = 1;
/// The revision of [`PROTOCOL_VERSION`] (docs/protocol.md section 9).
pub const PROTOCOL_REVISION: u32 = 4;
