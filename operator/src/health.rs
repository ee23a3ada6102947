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
) -> (
    StatusCode,
    [(&'static str, &'static str); 1],
    axum::body::Body,
) {
    // Streamed one metric at a time (see `Metrics::render_families`).
    let families = h
        .metrics
        .render_families()
        .map(Ok::<_, std::convert::Infallible>);
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        axum::body::Body::from_stream(futures::stream::iter(families)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn metrics_are_streamed_as_rendered() {
        let m = Metrics::new().expect("metrics");
        for i in 0..300 {
            let pool = format!("pool-{i}");
            m.desired.with_label_values(&["ns", &pool]).set(i);
            m.probes.with_label_values(&["ns", &pool, "poll"]).inc();
        }
        m.leader.set(1);
        let addr = serve("127.0.0.1:0".parse().expect("addr"), Health::new(m.clone()))
            .await
            .expect("serve");
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // HTTP/1.0: the streamed body ends with the connection (no chunked encoding).
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).await.expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert_eq!(body, m.render());
        assert!(
            body.contains("workpool_desired_replicas{namespace=\"ns\",workpool=\"pool-299\"} 299")
        );
        assert!(body.contains("workpool_leader 1"));
    }
}
