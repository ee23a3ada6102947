//! An in-memory Kubernetes API server double that speaks the real HTTP API.

pub mod patch;
pub mod schema;
pub mod types;
