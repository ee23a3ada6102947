//! Task handlers: built-in (`noop`, `sleep`, `fail`), `--exec` (one process per task)
//! and `--http` (POST to a container in the same pod).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::queue::Entry;

/// How many bytes of a failing process's stderr (or an HTTP error body) become the error.
pub const ERROR_TAIL_BYTES: usize = 2048;

/// The exit code by which an `--exec` handler says "never retry this task": the task goes
/// straight to the dead-letter stream with the handler's stderr tail as the reason. (Chosen
/// outside the range of `sysexits.h`, 64-78, where 75 means *temporary* failure, and of
/// the shells' 126-165.)
pub const PERMANENT_FAILURE_EXIT_CODE: i32 = 100;

/// Whether an HTTP status from an `--http` handler means "never retry": 4xx, except 408
/// (Request Timeout) and 429 (Too Many Requests), which say "try again later".
pub fn is_permanent_http_status(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// Worth retrying (until `maxDeliveries`).
    Retryable(String),
    /// The entry itself is bad (no payload, invalid JSON, ...): dead-letter it at once.
    Malformed(String),
    /// The handler said never to retry it (`--exec` exit code
    /// [`PERMANENT_FAILURE_EXIT_CODE`], `--http` 4xx other than 408/429): dead-letter it
    /// at once.
    Permanent(String),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Retryable(e) => f.write_str(e),
            TaskError::Malformed(e) => write!(f, "malformed task: {e}"),
            TaskError::Permanent(e) => write!(f, "permanent failure: {e}"),
        }
    }
}

/// What a successful run produced, kept only with results on (docs/protocol.md 8): an
/// `--exec` handler's stdout or an `--http` handler's response body, cut to the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The first bytes, at most the limit.
    pub bytes: Vec<u8>,
    /// There was more than the limit.
    pub truncated: bool,
}

impl Output {
    /// Appends `chunk`, keeping at most `limit` bytes in all.
    fn push(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            self.truncated = true;
        }
    }
}

/// A built-in handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Builtin {
    /// Succeeds at once (benchmarks).
    Noop,
    /// Sleeps for the payload's `{"ms": N}` milliseconds, then succeeds.
    Sleep,
    /// Always fails (to exercise retries and dead letters).
    Fail,
}

/// The user's code, one of three kinds.
#[derive(Debug, Clone)]
pub enum Handler {
    /// A built-in handler.
    Builtin(Builtin),
    /// Run `program args...` per task: payload on stdin, exit 0 = done.
    Exec {
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// POST the payload to this URL; 2xx = done.
    Http {
        /// Target URL.
        url: String,
        /// Shared client.
        client: reqwest::Client,
    },
}

#[derive(serde::Deserialize)]
struct SleepPayload {
    ms: u64,
}

fn payload(entry: &Entry) -> Result<&[u8], TaskError> {
    entry.payload.as_deref().ok_or_else(|| {
        let names: Vec<String> = entry
            .fields
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        TaskError::Malformed(format!(
            "entry has no `payload` field (fields: [{}])",
            names.join(", ")
        ))
    })
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(ERROR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

impl Handler {
    /// Whether this handler runs inline without awaiting anything (no task spawn needed).
    pub fn is_inline(&self) -> bool {
        matches!(self, Handler::Builtin(Builtin::Noop))
    }

    /// Runs the task once. With `capture` (results on: the output limit in bytes) a
    /// successful run returns its output (an `--exec` handler's stdout, which still goes to
    /// the worker's stdout too; an `--http` handler's response body); without it the
    /// output is empty and nothing is read or kept.
    pub async fn run(&self, entry: &Entry, capture: Option<usize>) -> Result<Output, TaskError> {
        match self {
            Handler::Builtin(b) => run_builtin(*b, entry).await.map(|()| Output::default()),
            Handler::Exec { program, args } => run_exec(program, args, entry, capture).await,
            Handler::Http { url, client } => run_http(client, url, entry, capture).await,
        }
    }

    /// Runs an inline handler synchronously; `None` if this handler is not inline.
    pub fn run_inline(&self, entry: &Entry) -> Option<Result<(), TaskError>> {
        match self {
            Handler::Builtin(Builtin::Noop) => Some(payload(entry).map(|_| ())),
            _ => None,
        }
    }
}

async fn run_builtin(b: Builtin, entry: &Entry) -> Result<(), TaskError> {
    let p = payload(entry)?;
    match b {
        Builtin::Noop => Ok(()),
        Builtin::Fail => Err(TaskError::Retryable("the fail handler always fails".into())),
        Builtin::Sleep => {
            let s: SleepPayload = serde_json::from_slice(p).map_err(|e| {
                TaskError::Malformed(format!(
                    "the sleep handler needs a JSON payload like {{\"ms\": 100}}: {e}"
                ))
            })?;
            tokio::time::sleep(Duration::from_millis(s.ms)).await;
            Ok(())
        }
    }
}

/// How an optional producer field reaches the handler.
struct ProducerField {
    /// The stream entry field the producer sets.
    field: &'static str,
    /// The environment variable of an `--exec` handler.
    env: &'static str,
    /// The request header of an `--http` handler.
    header: &'static str,
}

/// The optional fields a producer may add next to `payload` (DESIGN: `id`, `attempt`):
/// its own task id (an idempotency key) and its own attempt counter (e.g. on replay from
/// the dead-letter stream). `WORKPOOL_TASK_ID` stays the stream entry id.
const PRODUCER_FIELDS: [ProducerField; 2] = [
    ProducerField {
        field: "id",
        env: "WORKPOOL_PRODUCER_ID",
        header: "X-Workpool-Producer-Id",
    },
    ProducerField {
        field: "attempt",
        env: "WORKPOOL_ATTEMPT",
        header: "X-Workpool-Attempt",
    },
];

/// The producer fields present on `entry` whose values are usable as an environment
/// value and a header (printable ASCII); others are left out rather than mangled.
fn producer_fields(entry: &Entry) -> impl Iterator<Item = (&'static ProducerField, &str)> {
    PRODUCER_FIELDS.iter().filter_map(|f| {
        let value = std::str::from_utf8(entry.field(f.field)?).ok()?;
        let printable = !value.is_empty() && value.chars().all(|c| (' '..='~').contains(&c));
        printable.then_some((f, value))
    })
}

async fn run_exec(
    program: &str,
    args: &[String],
    entry: &Entry,
    capture: Option<usize>,
) -> Result<Output, TaskError> {
    let p = payload(entry)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        // The handler needs the task, not the queue: keep the Redis URL (and the password
        // it may carry) out of the handler's environment.
        .env_remove("WORKPOOL_REDIS_URL")
        .env("WORKPOOL_TASK_ID", entry.id.to_string())
        .env("WORKPOOL_DELIVERY", entry.deliveries.to_string());
    for (name, value) in producer_fields(entry) {
        cmd.env(name.env, value);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        // Without results the handler writes straight to the pod log; with results its
        // stdout is read here and copied there (tee).
        .stdout(if capture.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C meant for the worker does not hit running tasks
        // (the worker drains them), and an aborted task is killed with its children.
        .process_group(0)
        .spawn()
        .map_err(|e| TaskError::Retryable(format!("cannot start {program:?}: {e}")))?;
    let mut group = GroupGuard(child.id());
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let mut stdout = child.stdout.take();
    let tee = async {
        let mut out = Output::default();
        let (Some(s), Some(limit)) = (stdout.as_mut(), capture) else {
            return out;
        };
        let mut log = tokio::io::stdout();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // The pod log gets everything, the record at most the limit.
                    let _ = log.write_all(&chunk[..n]).await;
                    out.push(&chunk[..n], limit);
                }
            }
        }
        let _ = log.flush().await;
        out
    };
    let write = async {
        if let Some(mut s) = stdin.take() {
            // A handler may exit without reading its input: a broken pipe is not an error.
            let _ = s.write_all(p).await;
            let _ = s.shutdown().await;
        }
    };
    let read = async {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > 4 * ERROR_TAIL_BYTES {
                            buf.drain(..buf.len() - ERROR_TAIL_BYTES);
                        }
                    }
                }
            }
        }
        buf
    };
    let ((), err_buf, output) = tokio::join!(write, read, tee);
    let status = child
        .wait()
        .await
        .map_err(|e| TaskError::Retryable(format!("waiting for {program:?}: {e}")))?;
    group.0 = None;
    if status.success() {
        return Ok(output);
    }
    let what = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(s) => format!("killed by signal {s}"),
                None => status.to_string(),
            }
        }
    };
    let t = tail(&err_buf);
    let msg = if t.is_empty() {
        format!("{program}: {what}")
    } else {
        format!("{program}: {what}: {t}")
    };
    Err(if status.code() == Some(PERMANENT_FAILURE_EXIT_CODE) {
        TaskError::Permanent(msg)
    } else {
        TaskError::Retryable(msg)
    })
}

/// Kills the process group of an exec handler that is dropped before it finished (task
/// aborted at the end of the grace period, or timed out).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take()
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn run_http(
    client: &reqwest::Client,
    url: &str,
    entry: &Entry,
    capture: Option<usize>,
) -> Result<Output, TaskError> {
    let p = payload(entry)?;
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Workpool-Task-Id", entry.id.to_string())
        .header("X-Workpool-Delivery", entry.deliveries.to_string());
    for (name, value) in producer_fields(entry) {
        req = req.header(name.header, value);
    }
    let resp = req
        .body(p.to_vec())
        .send()
        .await
        .map_err(|e| TaskError::Retryable(format!("POST {url}: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        let mut out = Output::default();
        if let Some(limit) = capture {
            let mut resp = resp;
            // Read up to the limit; a longer body is cut (and its connection not reused).
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        out.push(&chunk, limit);
                        if out.truncated {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(TaskError::Retryable(format!(
                            "POST {url}: reading the response body: {e}"
                        )));
                    }
                }
            }
        }
        return Ok(out);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let t = tail(&body);
    let msg = if t.is_empty() {
        format!("POST {url}: HTTP {status}")
    } else {
        format!("POST {url}: HTTP {status}: {t}")
    };
    Err(if is_permanent_http_status(status.as_u16()) {
        TaskError::Permanent(msg)
    } else {
        TaskError::Retryable(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::EntryId;

    #[test]
    fn permanent_http_statuses() {
        for s in [400, 401, 403, 404, 410, 413, 422, 499] {
            assert!(is_permanent_http_status(s), "{s}");
        }
        for s in [200, 301, 408, 429, 500, 502, 503, 504] {
            assert!(!is_permanent_http_status(s), "{s}");
        }
    }

    fn entry(payload: Option<&[u8]>) -> Entry {
        Entry {
            id: EntryId { ms: 1, seq: 0 },
            payload: payload.map(|p| p.to_vec()),
            fields: vec![(b"id".to_vec(), b"x".to_vec())],
            deliveries: 1,
        }
    }

    #[tokio::test]
    async fn builtins() {
        let noop = Handler::Builtin(Builtin::Noop);
        assert_eq!(
            noop.run(&entry(Some(b"{}")), None).await,
            Ok(Output::default())
        );
        assert!(matches!(
            noop.run(&entry(None), None).await,
            Err(TaskError::Malformed(m)) if m.contains("no `payload` field") && m.contains("id")
        ));
        let sleep = Handler::Builtin(Builtin::Sleep);
        assert_eq!(
            sleep.run(&entry(Some(br#"{"ms": 1}"#)), None).await,
            Ok(Output::default())
        );
        assert!(matches!(
            sleep.run(&entry(Some(b"not json")), None).await,
            Err(TaskError::Malformed(_))
        ));
        assert!(matches!(
            Handler::Builtin(Builtin::Fail)
                .run(&entry(Some(b"{}")), None)
                .await,
            Err(TaskError::Retryable(_))
        ));
        assert_eq!(noop.run_inline(&entry(Some(b"{}"))), Some(Ok(())));
        assert!(matches!(
            noop.run_inline(&entry(None)),
            Some(Err(TaskError::Malformed(_)))
        ));
        assert_eq!(
            Handler::Builtin(Builtin::Fail).run_inline(&entry(Some(b"{}"))),
            None
        );
        assert_eq!(sleep.run_inline(&entry(Some(b"{}"))), None);
    }

    #[tokio::test]
    async fn exec_passes_payload_env_and_stderr_tail() {
        let ok = Handler::Exec {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                r#"test "$(cat)" = hello && test "$WORKPOOL_TASK_ID" = 1-0 && test "$WORKPOOL_DELIVERY" = 1 && test "$WORKPOOL_PRODUCER_ID" = x && test -z "${WORKPOOL_ATTEMPT+set}""#
                    .into(),
            ],
        };
        assert_eq!(
            ok.run(&entry(Some(b"hello")), None).await,
            Ok(Output::default())
        );
        assert!(matches!(
            ok.run(&entry(Some(b"other")), None).await,
            Err(TaskError::Retryable(_))
        ));
        let fail = Handler::Exec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo boom >&2; exit 3".into()],
        };
        match fail.run(&entry(Some(b"")), None).await {
            Err(TaskError::Retryable(m)) => {
                assert!(m.contains("exit status 3"), "{m}");
                assert!(m.ends_with("boom"), "{m}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let permanent = Handler::Exec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo cannot parse >&2; exit 100".into()],
        };
        match permanent.run(&entry(Some(b"")), None).await {
            Err(TaskError::Permanent(m)) => assert!(m.ends_with("cannot parse"), "{m}"),
            other => panic!("exit 100 must be a permanent failure: {other:?}"),
        }
        let missing = Handler::Exec {
            program: "/nonexistent/workpool-handler".into(),
            args: vec![],
        };
        assert!(matches!(
            missing.run(&entry(Some(b"")), None).await,
            Err(TaskError::Retryable(m)) if m.contains("cannot start")
        ));
    }

    #[tokio::test]
    async fn output_is_kept_up_to_the_limit_only_when_asked() {
        let mut o = Output::default();
        o.push(b"abc", 5);
        o.push(b"def", 5);
        assert_eq!((o.bytes.as_slice(), o.truncated), (&b"abcde"[..], true));
        let mut exact = Output::default();
        exact.push(b"abcde", 5);
        assert!(!exact.truncated);
        let printer = Handler::Exec {
            program: "sh".into(),
            args: vec!["-c".into(), "cat; printf ' done'".into()],
        };
        let got = printer.run(&entry(Some(b"in")), Some(1024)).await.unwrap();
        assert_eq!(
            (got.bytes.as_slice(), got.truncated),
            (&b"in done"[..], false)
        );
        let cut = printer.run(&entry(Some(b"in")), Some(4)).await.unwrap();
        assert_eq!((cut.bytes.as_slice(), cut.truncated), (&b"in d"[..], true));
        let off = printer.run(&entry(Some(b"in")), None).await.unwrap();
        assert_eq!(off, Output::default());
        // A failing run's stdout is no result: the error is its stderr tail.
        let failing = Handler::Exec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 2".into()],
        };
        assert!(matches!(
            failing.run(&entry(Some(b"")), Some(1024)).await,
            Err(TaskError::Retryable(m)) if m.ends_with("err")
        ));
    }
}
