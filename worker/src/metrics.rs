//! Prometheus metrics of the worker and its HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// Metric names (all prefixed `workpool_worker_`).
pub mod names {
    /// Counter, label `outcome`: succeeded | failed | retried | dead_lettered | released.
    pub const TASKS_TOTAL: &str = "workpool_worker_tasks_total";
    /// Histogram (seconds) of handler run time, label `outcome`: succeeded | failed.
    pub const TASK_DURATION: &str = "workpool_worker_task_duration_seconds";
    /// Gauge: tasks held by this worker (running, waiting to retry or to be acknowledged).
    pub const IN_FLIGHT: &str = "workpool_worker_in_flight_tasks";
    /// Counter: entries reclaimed from other (dead or stuck) consumers.
    pub const RECLAIMED_TOTAL: &str = "workpool_worker_reclaimed_tasks_total";
    /// Counter: Redis errors (connection or command).
    pub const REDIS_ERRORS_TOTAL: &str = "workpool_worker_redis_errors_total";
    /// Gauge: 1 while connected to Redis and reading.
    pub const READY: &str = "workpool_worker_ready";
    /// Gauge: 1 while the operator has told this worker to stop taking tasks (drain).
    pub const DRAINING: &str = "workpool_worker_draining";
}

/// All metrics of one worker process.
#[derive(Clone)]
pub struct Metrics {
    /// The registry behind `/metrics`.
    pub registry: Registry,
    /// Tasks that succeeded.
    pub succeeded: IntCounter,
    /// Handler runs that failed (retried or dead-lettered afterwards).
    pub failed: IntCounter,
    /// Failed runs scheduled for another try.
    pub retried: IntCounter,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: IntCounter,
    /// Entries handed back on shutdown.
    pub released: IntCounter,
    /// Run time of successful runs.
    pub duration_ok: Histogram,
    /// Run time of failed runs.
    pub duration_failed: Histogram,
    /// Tasks held.
    pub in_flight: IntGauge,
    /// Reclaimed entries.
    pub reclaimed: IntCounter,
    /// Redis errors.
    pub redis_errors: IntCounter,
    /// Readiness.
    pub ready_gauge: IntGauge,
    /// Draining.
    pub draining_gauge: IntGauge,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let tasks = IntCounterVec::new(
            Opts::new(
                names::TASKS_TOTAL,
                "Tasks handled by this worker, by outcome",
            ),
            &["outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(names::TASK_DURATION, "Handler run time in seconds").buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 900.0, 3600.0,
            ]),
            &["outcome"],
        )?;
        let in_flight = IntGauge::new(
            names::IN_FLIGHT,
            "Tasks held by this worker (running, waiting to retry or to be acknowledged)",
        )?;
        let reclaimed = IntCounter::new(
            names::RECLAIMED_TOTAL,
            "Entries reclaimed from consumers idle past the visibility timeout",
        )?;
        let redis_errors = IntCounter::new(names::REDIS_ERRORS_TOTAL, "Redis errors")?;
        let ready_gauge = IntGauge::new(names::READY, "1 while connected to Redis and reading")?;
        let draining_gauge = IntGauge::new(
            names::DRAINING,
            "1 while told to stop taking tasks (the operator drains this worker)",
        )?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(reclaimed.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(ready_gauge.clone()))?;
        registry.register(Box::new(draining_gauge.clone()))?;
        Ok(Metrics {
            succeeded: tasks.with_label_values(&["succeeded"]),
            failed: tasks.with_label_values(&["failed"]),
            retried: tasks.with_label_values(&["retried"]),
            dead_lettered: tasks.with_label_values(&["dead_lettered"]),
            released: tasks.with_label_values(&["released"]),
            duration_ok: duration.with_label_values(&["succeeded"]),
            duration_failed: duration.with_label_values(&["failed"]),
            registry,
            in_flight,
            reclaimed,
            redis_errors,
            ready_gauge,
            draining_gauge,
        })
    }

    /// The text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Shared state of the HTTP endpoints. Ready = the reader is reading, Redis answers the
/// health ping in time, and the worker is not shutting down.
#[derive(Clone)]
pub struct Health {
    /// Metrics.
    pub metrics: Metrics,
    /// True while connected to Redis and reading (set by the reader).
    pub ready: Arc<AtomicBool>,
    /// False while Redis does not answer the health ping within its short timeout.
    redis_ok: Arc<AtomicBool>,
    /// True from shutdown on.
    stopping: Arc<AtomicBool>,
    /// True while told to stop taking tasks.
    draining: Arc<AtomicBool>,
}

impl Health {
    /// Not ready until the reader reads and Redis answers.
    pub fn new(metrics: Metrics) -> Health {
        Health {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            redis_ok: Arc::new(AtomicBool::new(true)),
            stopping: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets whether the worker is told to stop taking tasks (not ready while it is).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.metrics.draining_gauge.set(i64::from(draining));
        self.update_gauge();
    }

    /// Whether the worker is told to stop taking tasks.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sets the reader's state.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.update_gauge();
    }

    /// Sets whether Redis answers the health ping in time.
    pub fn set_redis_ok(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.update_gauge();
    }

    /// Shutting down: not ready from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.update_gauge();
    }

    /// What `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.redis_ok.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
            && !self.is_draining()
    }

    fn update_gauge(&self) {
        self.metrics.ready_gauge.set(i64::from(self.is_ready()));
    }
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if h.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves the endpoints until `stop` is cancelled. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let handle = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok((bound, handle))
}
