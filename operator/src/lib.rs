//! workpool-operator: the Kubernetes operator for elastic worker pools on Redis Streams.
//!
//! - [`crd`]: the `WorkPool` types (the CRD is generated from them by `crdgen`);
//! - [`controller`]: the kube-runtime Controller wiring and the staged reconcile:
//!   [`observe`] (pool, pods, queue: one read each, never waiting for Redis) ->
//!   [`decide`] (pure: autoscaler, [`planner`], [`status`], Events) -> [`act`] (the API
//!   and queue writes, each error naming its call) -> publish (status and Events, only
//!   when they change); deletion through `kube::runtime::finalizer`;
//! - [`planner`]: pure: observed pods + desired count + queue + clock -> creates, drains,
//!   deletes; [`status`]: pure: conditions and status;
//! - [`pods`]: pure: the pod the operator creates for a pool; [`podcache`]: what is kept
//!   of each watched pod and the index from pool to pods;
//! - [`hub`]: every pool's queue read off the reconcile path, one task per Redis;
//!   [`probe`]: the pool's Redis URL and the classification of queue errors;
//! - [`wake`]: wake from zero: one blocking read per Redis over the streams of the
//!   autoscaled pools at zero, triggering a reconcile on their first task;
//! - [`metrics`], [`health`], [`leader`]: Prometheus metrics, the HTTP server
//!   (`/metrics`, `/healthz`, `/readyz`) and leader election on a Lease;
//! - [`run`]: the process (what the `workpool-operator` binary runs).
#![forbid(unsafe_code)]

pub use workpool_worker::queue;

pub mod act;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod decide;
#[cfg(test)]
pub mod fixtures;
pub mod health;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod planner;
pub mod podcache;
pub mod pods;
pub mod probe;
pub mod run;
pub mod status;
pub mod wake;

pub use controller::Context;

/// Errors of a reconcile. An API error names the call and the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{call} {object}: {source}")]
    Api {
        /// The call, in words ("create pod", "patch status", ...).
        call: &'static str,
        /// `namespace/name` of the object (or of the pool, for a pod not named yet).
        object: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// The WorkPool cannot be acted on as written.
    #[error("invalid WorkPool: {0}")]
    InvalidSpec(String),
    /// JSON (de)serialization.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Removing the pool's consumers on deletion failed (retried).
    #[error("cleanup: {0}")]
    Cleanup(String),
    /// Deletion waits for its pods to go or for Redis: looked at again after `retry`
    /// (not an error: no back-off, not counted).
    #[error("deletion waits for {what}")]
    CleanupWaits {
        /// What it waits for.
        what: String,
        /// When to look again.
        retry: std::time::Duration,
    },
    /// This replica does not hold the leader Lease (any more): it writes nothing.
    #[error("not the leader: nothing written")]
    NotLeader,
}

impl Error {
    /// An API error of `call` on `object`.
    pub fn api(call: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Error::Api {
            call,
            object: object.into(),
            source,
        }
    }

    /// The `reason` label of `workpool_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api {
                source: kube::Error::Api(s),
                ..
            } => match s.code {
                409 => "conflict",
                403 if s.message.contains("exceeded quota") => "quota",
                403 => "forbidden",
                404 => "not_found",
                422 => "invalid",
                _ => "api",
            },
            Error::Api { .. } => "api",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialization(_) => "serialization",
            Error::Cleanup(_) | Error::CleanupWaits { .. } => "cleanup",
            Error::NotLeader => "not_leader",
        }
    }

    /// An error of the finalizer helper, as ours.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>, object: String) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(k) => Error::api("add finalizer to", object, k),
            F::RemoveFinalizer(k) => Error::api("remove finalizer from", object, k),
            F::UnnamedObject => Error::InvalidSpec("the WorkPool has no name".into()),
            F::InvalidFinalizer => Error::InvalidSpec("invalid finalizer name".into()),
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
        let status = |code, msg: &str| {
            Error::api(
                "create pod",
                "ns/p",
                kube::Error::Api(
                    kube::core::Status::failure(msg, "y")
                        .with_code(code)
                        .boxed(),
                ),
            )
        };
        assert_eq!(
            status(403, "pods \"p-x\" is forbidden: exceeded quota: q").metric_label(),
            "quota"
        );
        assert!(
            status(409, "x")
                .to_string()
                .starts_with("create pod ns/p: "),
            "the log line names the call and the object"
        );
        for e in [
            status(409, "x"),
            status(403, "x"),
            status(403, "exceeded quota"),
            status(404, "x"),
            status(422, "x"),
            status(500, "x"),
            Error::InvalidSpec("x".into()),
            Error::Cleanup("x".into()),
            Error::NotLeader,
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
