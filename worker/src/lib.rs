//! The workpool queue protocol on Redis Streams and the worker runtime.
#![forbid(unsafe_code)]

pub mod queue {}
