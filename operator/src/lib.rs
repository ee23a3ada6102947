//! workpool-operator: the Kubernetes operator for elastic worker pools on Redis Streams.
//!
//! - [`crd`]: the `WorkPool` types (the CRD is generated from them by `crdgen`);
//! - [`planner`]: pure: observed pods + desired count + queue stats + clock -> actions;
//! - [`pods`]: pure: the pod the operator creates for a pool;
//! - [`controller`]: the kube-runtime Controller that applies plans and writes status;
//! - [`probe`]: queue statistics per pool, one Redis connection per URL;
//! - [`wake`]: wake from zero: one blocking read per Redis over the streams of the
//!   autoscaled pools at zero, triggering a reconcile on their first task;
//! - [`metrics`], [`health`], [`leader`]: Prometheus metrics, the HTTP server
//!   (`/metrics`, `/healthz`, `/readyz`) and leader election on a Lease;
//! - [`run`]: the process (what the `workpool-operator` binary runs).
#![forbid(unsafe_code)]

pub use workpool_worker::queue;

pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod pods;
pub mod probe;
pub mod run;
pub mod wake;

pub use controller::Context;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API answered with an error or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The WorkPool cannot be acted on as written.
    #[error("invalid WorkPool: {0}")]
    InvalidSpec(String),
    /// JSON (de)serialization.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Removing the pool's consumers on deletion failed (retried).
    #[error("cleanup: {0}")]
    Cleanup(String),
}

impl Error {
    /// The `reason` label of `workpool_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(_) => "api",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialization(_) => "serialization",
            Error::Cleanup(_) => "cleanup",
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_label_is_a_documented_metric_reason() {
        let status = |code| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        for e in [
            status(409),
            status(403),
            status(422),
            status(500),
            Error::InvalidSpec("x".into()),
            Error::Cleanup("x".into()),
        ] {
            assert!(
                metrics::RECONCILE_ERROR_REASONS.contains(&e.metric_label()),
                "{}",
                e.metric_label()
            );
        }
    }
}

pub mod autoscale;
pub mod simulate;
