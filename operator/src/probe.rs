//! The queue probe: reads [`QueueStats`] of a pool (every partition, summed) through
//! `workpool_worker::queue`, with one connection per Redis target (URL + TLS material:
//! standalone, Sentinel or Cluster, see `workpool_worker::target`) shared by every pool on
//! that target, and removes consumers that hold nothing.
//!
//! The target is built from the pool's URL (`url` or `urlSecretRef`) and its TLS Secrets
//! (`tls.caSecretRef`, `tls.clientCertSecretRef`): the same material the pool's pods get.
//!
//! Errors are classified for the `QueueReachable` condition ([`ProbeError::reason`]) and
//! the metrics ([`ProbeError::metric_label`]); their messages never contain the URL (it
//! may carry a password).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use workpool_worker::queue::{Pool, QueueError, QueueStats, RemoveConsumer};
use workpool_worker::target::{Connection, Target, Tls};

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
    /// The TLS handshake failed (a CA that did not sign the server's certificate, a
    /// client certificate the server refused, ...) or the TLS material is unusable.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The pool's keys do not fit the target (e.g. a stream name with a hash tag on
    /// Redis Cluster).
    #[error("{0}")]
    Invalid(String),
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
            ProbeError::Tls(_) => "TLSFailed",
            ProbeError::Invalid(_) => "InvalidSpec",
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
            ProbeError::Tls(_) => "tls",
            ProbeError::Invalid(_) => "invalid_spec",
        }
    }

    fn from_queue(e: QueueError) -> Self {
        match e {
            QueueError::Connection(e) | QueueError::Redis(e) if is_auth(&e) => {
                ProbeError::Auth(redis_message(&e))
            }
            QueueError::Connection(e) if workpool_worker::target::is_tls_error(&e) => {
                ProbeError::Tls(workpool_worker::target::tls_message(&e))
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

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;
/// (namespace, Secret name, key) -> (value, read at).
type SecretCache = HashMap<(String, String, String), (Vec<u8>, Instant)>;

/// Shared by every reconcile: connections and targets per target, and Secret values.
pub struct QueueProbe {
    conns: Mutex<HashMap<String, Slot>>,
    targets: Mutex<HashMap<String, Target>>,
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
            targets: Mutex::new(HashMap::new()),
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
        let v = self.secret_value(client, wp, &r.name, &r.key).await?;
        Ok(String::from_utf8_lossy(&v).trim().to_string())
    }

    /// The pool's target: its URL with the TLS material of its Secrets (the same the
    /// pods get mounted). Built once per distinct URL + material and then reused.
    pub async fn target(&self, client: &kube::Client, wp: &WorkPool) -> Result<Target, ProbeError> {
        let url = self.url(client, wp).await?;
        let mut tls = Tls::none();
        if let Some(t) = &wp.spec.queue.redis.tls {
            if let Some(ca) = &t.ca_secret_ref {
                tls.ca = Some(self.secret_value(client, wp, &ca.name, &ca.key).await?);
            }
            if let Some(c) = &t.client_cert_secret_ref {
                tls.cert = Some(self.secret_value(client, wp, &c.name, &c.cert_key).await?);
                tls.key = Some(self.secret_value(client, wp, &c.name, &c.key_key).await?);
            }
        }
        let key = workpool_worker::target::target_key(&url, &tls);
        if let Ok(m) = self.targets.lock()
            && let Some(t) = m.get(&key)
        {
            return Ok(t.clone());
        }
        let target = Target::new(&url, &tls).map_err(|e| match e {
            QueueError::InvalidArgument(m) if m.starts_with("invalid redis URL") => {
                ProbeError::InvalidUrl
            }
            // TLS material that cannot be used (not PEM, a certificate without its key, a
            // CA with a plain URL): the message names no secret value.
            QueueError::InvalidArgument(m) => ProbeError::Tls(m),
            other => ProbeError::from_queue(other),
        })?;
        if let Ok(mut m) = self.targets.lock() {
            // Old targets of changed Secrets or URLs are dropped with their connections.
            if m.len() > 256 {
                m.clear();
            }
            m.insert(key, target.clone());
        }
        Ok(target)
    }

    /// A key of a Secret in the pool's namespace, cached for [`SECRET_TTL`].
    async fn secret_value(
        &self,
        client: &kube::Client,
        wp: &WorkPool,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, ProbeError> {
        let ns = wp.metadata.namespace.clone().unwrap_or_default();
        let cache_key = (ns.clone(), name.to_string(), key.to_string());
        if let Ok(cache) = self.secrets.lock()
            && let Some((v, at)) = cache.get(&cache_key)
            && at.elapsed() < SECRET_TTL
        {
            return Ok(v.clone());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(ProbeError::Secret(format!(
                    "Secret {name:?} not found in namespace {ns:?}"
                )));
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(ProbeError::Secret(format!(
                    "the operator may not read Secret {name:?}: {}",
                    s.message
                )));
            }
            Err(e) => {
                return Err(ProbeError::Secret(format!("reading Secret {name:?}: {e}")));
            }
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            });
        let Some(value) = value else {
            return Err(ProbeError::Secret(format!(
                "Secret {name:?} has no key {key:?}"
            )));
        };
        if let Ok(mut cache) = self.secrets.lock() {
            cache.insert(cache_key, (value.clone(), Instant::now()));
        }
        Ok(value)
    }

    /// Forgets the cached values of the Secrets the pool refers to (after one changed or
    /// stopped working).
    pub fn forget_secret(&self, wp: &WorkPool) {
        let ns = wp.metadata.namespace.clone().unwrap_or_default();
        if let Ok(mut cache) = self.secrets.lock() {
            cache.retain(|(n, name, _), _| !(n == &ns && wp.references_secret(name)));
        }
    }

    fn slot(&self, target: &Target) -> Slot {
        // The URL and the TLS material name the connection: a changed CA gets a new one.
        match self.conns.lock() {
            Ok(mut m) => m.entry(target.key().to_string()).or_default().clone(),
            Err(_) => Slot::default(),
        }
    }

    /// Runs `f` on the target's connection. A connection kept from earlier that turns
    /// out dropped (Redis restarted, a failover, a proxy closed it) is replaced and `f`
    /// runs once more on a new one: a read after an idle period (a wake from zero) must
    /// not fail for it.
    async fn with_conn<T, F, Fut>(&self, target: &Target, f: F) -> Result<T, ProbeError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        match self.with_conn_once(target, &f).await {
            (Err(ProbeError::Unreachable(_)), true) => self.with_conn_once(target, &f).await.0,
            (r, _) => r,
        }
    }

    /// One attempt; the bool says whether the connection was reused.
    async fn with_conn_once<T, F, Fut>(
        &self,
        target: &Target,
        f: &F,
    ) -> (Result<T, ProbeError>, bool)
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let slot = self.slot(target);
        let mut reused = false;
        let conn = {
            let mut guard = slot.lock().await;
            match guard.as_ref() {
                Some(c) => {
                    reused = true;
                    c.clone()
                }
                None => {
                    // Sentinel asks the sentinels and then the primary: more than one
                    // round trip.
                    let c = match tokio::time::timeout(
                        self.timeout * 2,
                        target.connect(Some(self.timeout)),
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
        if let Err(ProbeError::Unreachable(_) | ProbeError::Auth(_) | ProbeError::Tls(_)) = &r {
            // Reconnect next time (Redis restarted, a failover, password changed, ...).
            *slot.lock().await = None;
        }
        (r, reused)
    }

    /// The pool's keys on this target (hash-tagged on Cluster), checked.
    fn keys_on(target: &Target, pool: &Pool) -> Result<Pool, ProbeError> {
        let pool = pool.clone().with_cluster(target.is_cluster());
        pool.validate()
            .map_err(|e| ProbeError::Invalid(e.to_string()))?;
        Ok(pool)
    }

    /// Stats of the pool: every partition, summed (each partition under `partitions`).
    /// A missing stream or group is an empty queue.
    pub async fn stats(&self, target: &Target, pool: &Pool) -> Result<QueueStats, ProbeError> {
        let pool = Self::keys_on(target, pool)?;
        self.with_conn(target, |c| {
            let p = pool.clone();
            async move { p.stats(&c).await }
        })
        .await
    }

    /// Removes each named consumer that holds nothing in any partition; returns how many
    /// were removed and which still hold tasks.
    pub async fn remove_idle_consumers(
        &self,
        target: &Target,
        pool: &Pool,
        names: &[String],
    ) -> Result<(usize, Vec<(String, u64)>), ProbeError> {
        let pool = Self::keys_on(target, pool)?;
        self.with_conn(target, |c| {
            let p = pool.clone();
            let names = names.to_vec();
            async move {
                let mut removed = 0;
                let mut kept = Vec::new();
                for n in names {
                    match p.remove_consumer_if_idle(&c, &n).await? {
                        RemoveConsumer::Removed => removed += 1,
                        RemoveConsumer::StillPending(held) => kept.push((n, held)),
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
            ProbeError::Tls("x".into()),
            ProbeError::Invalid("x".into()),
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
