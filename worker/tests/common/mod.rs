//! Helpers for the worker's integration tests: the real binary against a real redis-server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use workpool_worker::queue::{self, NewTask, Queue, QueueStats};

pub const BIN: &str = env!("CARGO_BIN_EXE_workpool-worker");

pub async fn conn(url: &str) -> MultiplexedConnection {
    queue::connect(url, Some(Duration::from_secs(10)))
        .await
        .expect("connect to test redis")
}

pub async fn enqueue(url: &str, q: &Queue, payloads: &[&str]) -> Vec<queue::EntryId> {
    let mut c = conn(url).await;
    let tasks: Vec<NewTask<'_>> = payloads
        .iter()
        .map(|p| NewTask::new(p.as_bytes()))
        .collect();
    q.enqueue(&mut c, &tasks).await.expect("enqueue")
}

pub async fn stats(url: &str, q: &Queue) -> QueueStats {
    let mut c = conn(url).await;
    q.stats(&mut c).await.expect("stats")
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `workpool-worker run` process.
pub struct Worker {
    pub child: Child,
    pub consumer: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// Starts `workpool-worker run` with JSON logs and metrics on a free port. `args` come
    /// last (put `--exec ...` at the end).
    pub fn spawn(url: &str, stream: &str, group: &str, consumer: &str, args: &[&str]) -> Worker {
        let mut child = Command::new(BIN)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--redis-url")
            .arg(url)
            .arg("--stream")
            .arg(stream)
            .arg("--group")
            .arg(group)
            .arg("--consumer")
            .arg(consumer)
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn workpool-worker");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let l2 = lines.clone();
        let name = consumer.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
                if let Ok(mut v) = l2.lock() {
                    v.push(line);
                }
            }
        });
        Worker {
            child,
            consumer: consumer.to_string(),
            lines,
        }
    }

    pub fn logs(&self) -> String {
        self.lines.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// The bound metrics address, from the startup log line.
    pub async fn metrics_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = self.lines.lock() {
                for l in v.iter() {
                    if let Ok(j) = serde_json::from_str::<serde_json::Value>(l)
                        && let Some(a) = j["fields"]["metrics_addr"].as_str()
                    {
                        return a.parse().expect("metrics_addr parses");
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "worker never logged its metrics address:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {timeout:?}",
                self.consumer
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric sample value from /metrics (sum over label sets matching `filter`).
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let addr = self.metrics_addr().await;
        let (code, body) = http_get(addr, "/metrics");
        assert_eq!(code, 200, "/metrics status");
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| {
                let rest = &l[name.len()..];
                (rest.starts_with(' ') || rest.starts_with('{')) && l.contains(filter)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET on loopback: (status, body). Status 0 when unreachable.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A fresh temp file path for side-channel output of `--exec` handlers.
pub fn side_file(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

pub fn read_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.to_string())
        .collect()
}

/// A TCP proxy in front of Redis that can lose one reply: once armed, the first reply
/// from Redis that carries a stream entry (it contains the field name `payload`) is
/// swallowed and the client connection is closed, as when a connection drops after Redis
/// ran the command. The command itself ran.
pub struct LossyProxy {
    pub port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl LossyProxy {
    pub async fn start(upstream_port: u16) -> LossyProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (armed.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let (a, d) = (a.clone(), d.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let chunk = &buf[..n];
                                    if chunk.windows(7).any(|w| w == b"payload")
                                        && a.swap(false, Ordering::SeqCst)
                                    {
                                        d.fetch_add(1, Ordering::SeqCst);
                                        break;
                                    }
                                    if cw.write_all(chunk).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    // Either side ending closes both.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        LossyProxy {
            port,
            armed,
            dropped,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Lose the next reply that carries an entry.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many replies were lost.
    pub fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The log lines of a worker whose message contains `text`.
pub fn count_logs(w: &Worker, text: &str) -> usize {
    w.logs().lines().filter(|l| l.contains(text)).count()
}

/// An HTTP task handler for `run --http` that records every run: a POST with the payload
/// `<kind> <seconds>` and the producer id header; `ok` sleeps and answers 200, `perm`
/// answers 422 (a permanent failure: dead-lettered at once). Cheaper than a process per
/// task when thousands of tasks run.
pub struct Recorder {
    pub url: String,
    events: Arc<Mutex<Vec<(char, String)>>>,
}

/// Per task id: runs started, completed (`ok`) and finished (completed or failed for good).
pub type Counts = std::collections::HashMap<String, usize>;

impl Recorder {
    pub async fn start() -> Recorder {
        use axum::http::{HeaderMap, StatusCode};
        let events: Arc<Mutex<Vec<(char, String)>>> = Arc::default();
        let ev = events.clone();
        let app = axum::Router::new().route(
            "/task",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let ev = ev.clone();
                async move {
                    let id = headers
                        .get("x-workpool-producer-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_string();
                    let mut it = body.split_whitespace();
                    let kind = it.next().unwrap_or("").to_string();
                    let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
                    ev.lock().expect("events").push(('S', id.clone()));
                    if kind == "perm" {
                        ev.lock().expect("events").push(('F', id));
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "cannot process".to_string(),
                        );
                    }
                    if secs > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    ev.lock().expect("events").push(('E', id));
                    (StatusCode::OK, String::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            url: format!("http://{addr}/task"),
            events,
        }
    }

    /// (started, completed, finished) counts per task id so far.
    pub fn counts(&self) -> (Counts, Counts, Counts) {
        let mut started = Counts::new();
        let mut ended = Counts::new();
        let mut finished = Counts::new();
        for (k, id) in self.events.lock().expect("events").iter() {
            match k {
                'S' => *started.entry(id.clone()).or_default() += 1,
                'E' => {
                    *ended.entry(id.clone()).or_default() += 1;
                    *finished.entry(id.clone()).or_default() += 1;
                }
                _ => *finished.entry(id.clone()).or_default() += 1,
            }
        }
        (started, ended, finished)
    }

    /// Runs completed so far.
    pub fn completed(&self) -> usize {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|(k, _)| *k == 'E')
            .count()
    }
}
