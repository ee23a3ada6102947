//! An in-memory Kubernetes API server double that speaks the real HTTP API.
//!
//! Start it with [`ApiServer::start`]; it serves plain HTTP on a loopback port until the
//! handle is dropped or [`ApiServer::shutdown`] is called. See `tests/README.md` for
//! exactly what is modelled.

pub mod builtins;
pub mod faults;
pub mod gc;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod types;
pub mod validation;
pub mod watch;

pub use faults::{FaultConfig, FaultInjector, FaultRule};
pub use server::ServerConfig;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::Value;
use server::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running API server double.
pub struct ApiServer {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    gc_task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `addr` (use port 0 for a free port) and serves until shut down.
    pub async fn start(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, local, FaultInjector::new()));
        let app = Router::new()
            .fallback(
                |AxState(s): AxState<Arc<Shared>>,
                 method: Method,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    server::handle(s, method, uri, headers, body).await
                },
            )
            .with_state(shared.clone())
            // The apiserver's request size limit (3 MiB).
            .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        let gc_shared = shared.clone();
        let gc_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc_shared.config.gc_interval);
            loop {
                tick.tick().await;
                let mut st = gc_shared.lock();
                // Run to a fixed point (bounded) so cascades settle within one tick.
                for _ in 0..8 {
                    if !gc::run_once(&mut st) {
                        break;
                    }
                }
            }
        });
        Ok(ApiServer {
            shared,
            shutdown: Some(tx),
            task: Some(task),
            gc_task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The fault injector of this server.
    /// Lets `pods/log` serve the container logs a process kubelet with this work
    /// directory writes (`<work_dir>/<ns>_<pod>_<uid>/<container>.log`).
    pub fn add_kubelet_log_dir(&self, work_dir: impl Into<std::path::PathBuf>) {
        self.shared
            .log_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(work_dir.into());
    }

    pub fn faults(&self) -> FaultInjector {
        self.shared.faults.clone()
    }

    /// Forgets the whole watch event history: every watch or continue token from an
    /// older resourceVersion now gets 410 Gone (Expired), as after an etcd compaction.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Sets how many events the history keeps (smaller = 410 sooner).
    pub fn set_history_limit(&self, n: usize) {
        self.shared.lock().history_limit = n.max(1);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// A stored object, as the server holds it (for assertions).
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(
                group.to_string(),
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    /// Stops serving (open watches end).
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.shared.faults.close_watches();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.gc_task.abort();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.faults.close_watches();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.gc_task.abort();
    }
}
