//! The HTTP server: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (200 once this replica is either the leader with its caches synced, or a
//! standby waiting for the Lease; 503 before).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Starting: checks and cache sync not done.
    Starting = 0,
    /// Waiting for the leader Lease; another replica acts.
    Standby = 1,
    /// Leading, caches synced.
    Ready = 2,
    /// Shutting down.
    Stopping = 3,
}

/// Shared health state.
#[derive(Clone)]
pub struct Health {
    state: Arc<AtomicU8>,
    metrics: Metrics,
}

impl Health {
    /// Starting, with these metrics.
    pub fn new(metrics: Metrics) -> Self {
        Health {
            state: Arc::new(AtomicU8::new(Readiness::Starting as u8)),
            metrics,
        }
    }

    /// Sets the readiness.
    pub fn set(&self, r: Readiness) {
        self.state.store(r as u8, Ordering::SeqCst);
    }

    /// The readiness.
    pub fn get(&self) -> Readiness {
        match self.state.load(Ordering::SeqCst) {
            1 => Readiness::Standby,
            2 => Readiness::Ready,
            3 => Readiness::Stopping,
            _ => Readiness::Starting,
        }
    }
}

async fn metrics(
    State(h): State<Health>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        h.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    match h.get() {
        Readiness::Ready => (StatusCode::OK, "ready: leading, caches synced\n"),
        Readiness::Standby => (
            StatusCode::OK,
            "ready: standby, waiting for the leader lease\n",
        ),
        Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Readiness::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
    }
}

/// The router.
pub fn router(h: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(h)
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, h: Health) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(h)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}
