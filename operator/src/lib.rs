//! workpool-operator: the Kubernetes operator for elastic worker pools.
//!
//! The controller, planner and autoscaler land in later issues; this crate already
//! links the shared queue protocol so the operator and the workers can never disagree
//! about it.
#![forbid(unsafe_code)]

pub use workpool_worker::queue;
