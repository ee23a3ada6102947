//! The workpool queue protocol on Redis Streams and the worker runtime.
//!
//! - [`queue`]: the protocol (used by the operator for stats and consumer cleanup);
//! - [`target`]: where the queue lives (standalone, Sentinel, Cluster; TLS) and connections;
//! - [`runtime`], [`handler`], [`metrics`]: the `workpool-worker` binary's runtime;
//! - `testing` (feature `test-support`): a real `redis-server` for tests;
//! - `chaos` (feature `test-support`): the chaos suite (`tests/chaos.rs`, `workpool-chaos`).
#![forbid(unsafe_code)]

pub mod handler;
pub mod metrics;
pub mod queue;
pub mod runtime;
pub mod target;

#[cfg(feature = "test-support")]
pub mod testing;

#[cfg(feature = "test-support")]
pub mod chaos;
