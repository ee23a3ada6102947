//! The queue probe: reads [`QueueStats`] of a pool's stream and group through
//! `workpool_worker::queue`, with one multiplexed connection per Redis URL shared by every
//! pool on that Redis, and removes consumers that hold nothing.
//!
//! Errors are classified for the `QueueReachable` condition ([`ProbeError::reason`]) and
//! the metrics ([`ProbeError::metric_label`]); their messages never contain the URL (it
//! may carry a password).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use redis::aio::MultiplexedConnection;
use workpool_worker::queue::{Queue, QueueError, QueueStats, RemoveConsumer};

use crate::crd::WorkPool;

/// How long a Redis URL read from a Secret is reused before the Secret is read again.
const SECRET_TTL: Duration = Duration::from_secs(30);

/// Why the queue could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The Secret or its key is missing, or it cannot be read.
    #[error("{0}")]
    Secret(String),
    /// The URL cannot be parsed.
    #[error("the Redis URL is not valid")]
    InvalidUrl,
    /// Connection refused, timed out, dropped.
    #[error("Redis is unreachable: {0}")]
    Unreachable(String),
    /// Wrong password or user.
    #[error("Redis refused the credentials: {0}")]
    Auth(String),
    /// Redis answered a command with an error (ACL, unknown command, wrong type, ...).
    #[error("Redis refused a command: {0}")]
    Refused(String),
    /// Redis answered with something unexpected.
    #[error("unexpected answer from Redis: {0}")]
    Protocol(String),
}

impl ProbeError {
    /// The reason of `QueueReachable=False`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Secret(_) => "SecretUnavailable",
            ProbeError::InvalidUrl => "InvalidURL",
            ProbeError::Unreachable(_) => "Unreachable",
            ProbeError::Auth(_) => "AuthenticationFailed",
            ProbeError::Refused(_) => "CommandRefused",
            ProbeError::Protocol(_) => "ProtocolError",
        }
    }

    /// The `reason` label of `workpool_queue_probe_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProbeError::Secret(_) => "secret",
            ProbeError::InvalidUrl => "invalid_url",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Auth(_) => "auth",
            ProbeError::Refused(_) => "refused",
            ProbeError::Protocol(_) => "protocol",
        }
    }

    fn from_queue(e: QueueError) -> Self {
        match e {
            QueueError::Connection(e) | QueueError::Redis(e) if is_auth(&e) => {
                ProbeError::Auth(redis_message(&e))
            }
            QueueError::Connection(e) => ProbeError::Unreachable(redis_message(&e)),
            QueueError::Redis(e) => ProbeError::Refused(redis_message(&e)),
            QueueError::NoGroup { .. } => ProbeError::Refused("the consumer group vanished".into()),
            QueueError::Protocol { command, detail } => {
                ProbeError::Protocol(format!("{command}: {detail}"))
            }
            QueueError::InvalidArgument(_) => ProbeError::InvalidUrl,
        }
    }
}

fn is_auth(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        || e.kind() == redis::ErrorKind::AuthenticationFailed
}

/// A Redis error in words, without anything from the URL.
fn redis_message(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => {
            if e.is_connection_refusal() {
                "connection refused".into()
            } else if e.is_timeout() {
                "timed out".into()
            } else if e.is_connection_dropped() {
                "connection dropped".into()
            } else {
                // The redis crate's Display of I/O errors names the OS error, not the URL.
                let s = e.to_string();
                s.chars().take(200).collect()
            }
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>;
/// (namespace, Secret name, key) -> (URL, read at).
type SecretCache = HashMap<(String, String, String), (String, Instant)>;

/// Shared by every reconcile: connections per URL and Secret values.
pub struct QueueProbe {
    conns: Mutex<HashMap<String, Slot>>,
    secrets: Mutex<SecretCache>,
    timeout: Duration,
}

impl Default for QueueProbe {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl QueueProbe {
    /// A probe whose Redis commands time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        QueueProbe {
            conns: Mutex::new(HashMap::new()),
            secrets: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The pool's Redis URL: `spec.queue.redis.url`, or read from the Secret.
    pub async fn url(&self, client: &kube::Client, wp: &WorkPool) -> Result<String, ProbeError> {
        let redis = &wp.spec.queue.redis;
        if let Some(url) = &redis.url {
            return Ok(url.clone());
        }
        let Some(r) = &redis.url_secret_ref else {
            return Err(ProbeError::Secret(
                "neither url nor urlSecretRef is set".into(),
            ));
        };
        let ns = wp.metadata.namespace.clone().unwrap_or_default();
        let key = (ns.clone(), r.name.clone(), r.key.clone());
        if let Ok(cache) = self.secrets.lock()
            && let Some((url, at)) = cache.get(&key)
            && at.elapsed() < SECRET_TTL
        {
            return Ok(url.clone());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = match api.get_opt(&r.name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(ProbeError::Secret(format!(
                    "Secret {:?} not found in namespace {ns:?}",
                    r.name
                )));
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(ProbeError::Secret(format!(
                    "the operator may not read Secret {:?}: {}",
                    r.name, s.message
                )));
            }
            Err(e) => {
                return Err(ProbeError::Secret(format!(
                    "reading Secret {:?}: {e}",
                    r.name
                )));
            }
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .cloned()
            });
        let Some(url) = value else {
            return Err(ProbeError::Secret(format!(
                "Secret {:?} has no key {:?}",
                r.name, r.key
            )));
        };
        if let Ok(mut cache) = self.secrets.lock() {
            cache.insert(key, (url.clone(), Instant::now()));
        }
        Ok(url)
    }

    /// Forgets a cached Secret value (after it stopped working).
    pub fn forget_secret(&self, wp: &WorkPool) {
        if let Some(r) = &wp.spec.queue.redis.url_secret_ref
            && let Ok(mut cache) = self.secrets.lock()
        {
            let ns = wp.metadata.namespace.clone().unwrap_or_default();
            cache.remove(&(ns, r.name.clone(), r.key.clone()));
        }
    }

    fn slot(&self, url: &str) -> Slot {
        match self.conns.lock() {
            Ok(mut m) => m.entry(url.to_string()).or_default().clone(),
            Err(_) => Slot::default(),
        }
    }

    /// Runs `f` on the URL's connection. A connection kept from earlier that turns out
    /// dropped (Redis restarted, a proxy closed it) is replaced and `f` runs once more on
    /// a new one: a read after an idle period (a wake from zero) must not fail for it.
    async fn with_conn<T, F, Fut>(&self, url: &str, f: F) -> Result<T, ProbeError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        match self.with_conn_once(url, &f).await {
            (Err(ProbeError::Unreachable(_)), true) => self.with_conn_once(url, &f).await.0,
            (r, _) => r,
        }
    }

    /// One attempt; the bool says whether the connection was reused.
    async fn with_conn_once<T, F, Fut>(&self, url: &str, f: &F) -> (Result<T, ProbeError>, bool)
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let slot = self.slot(url);
        let mut reused = false;
        let conn = {
            let mut guard = slot.lock().await;
            match guard.as_ref() {
                Some(c) => {
                    reused = true;
                    c.clone()
                }
                None => {
                    let c = match tokio::time::timeout(
                        self.timeout,
                        workpool_worker::queue::connect(url, Some(self.timeout)),
                    )
                    .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return (Err(ProbeError::from_queue(e)), false),
                        Err(_) => {
                            return (
                                Err(ProbeError::Unreachable("connect timed out".into())),
                                false,
                            );
                        }
                    };
                    *guard = Some(c.clone());
                    c
                }
            }
        };
        let r = tokio::time::timeout(self.timeout * 2, f(conn))
            .await
            .map_err(|_| ProbeError::Unreachable("timed out".into()))
            .and_then(|r| r.map_err(ProbeError::from_queue));
        if let Err(ProbeError::Unreachable(_) | ProbeError::Auth(_)) = &r {
            // Reconnect next time (Redis restarted, password changed, ...).
            *slot.lock().await = None;
        }
        (r, reused)
    }

    /// Stats of the queue. A missing stream or group is an empty queue.
    pub async fn stats(&self, url: &str, queue: &Queue) -> Result<QueueStats, ProbeError> {
        self.with_conn(url, |mut c| {
            let q = queue.clone();
            async move { q.stats(&mut c).await }
        })
        .await
    }

    /// Removes each named consumer that holds nothing; returns how many were removed and
    /// which still hold tasks.
    pub async fn remove_idle_consumers(
        &self,
        url: &str,
        queue: &Queue,
        names: &[String],
    ) -> Result<(usize, Vec<(String, u64)>), ProbeError> {
        self.with_conn(url, |mut c| {
            let q = queue.clone();
            let names = names.to_vec();
            async move {
                let mut removed = 0;
                let mut kept = Vec::new();
                for n in names {
                    match q.remove_consumer_if_idle(&mut c, &n).await? {
                        RemoveConsumer::Removed => removed += 1,
                        RemoveConsumer::StillPending(p) => kept.push((n, p)),
                        RemoveConsumer::NotFound | RemoveConsumer::NoGroup => {}
                    }
                }
                Ok((removed, kept))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_labels_are_known() {
        let all = [
            ProbeError::Secret("x".into()),
            ProbeError::InvalidUrl,
            ProbeError::Unreachable("x".into()),
            ProbeError::Auth("x".into()),
            ProbeError::Refused("x".into()),
            ProbeError::Protocol("x".into()),
        ];
        for e in all {
            assert!(crate::metrics::PROBE_ERROR_REASONS.contains(&e.metric_label()));
            assert!(e.reason().chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn invalid_url_message_does_not_echo_the_url() {
        let e = ProbeError::from_queue(QueueError::InvalidArgument(
            "invalid redis URL \"redis://:hunter2@x\"".into(),
        ));
        assert_eq!(e, ProbeError::InvalidUrl);
        assert!(!e.to_string().contains("hunter2"));
    }
}
