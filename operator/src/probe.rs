//! What reaching a pool's queue needs and how it fails: the pool's Redis URL (from the
//! spec or a Secret, [`SecretUrls`]) and the classification of errors for the
//! `QueueReachable` condition ([`ProbeError::reason`]) and the metrics
//! ([`ProbeError::metric_label`]); their messages never contain the URL (it may carry a
//! password). The reads themselves happen in [`crate::hub`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use workpool_worker::queue::QueueError;

use crate::crd::WorkPool;

/// How long a Redis URL read from a Secret is reused before the Secret is read again,
/// by default (`--secret-refresh`).
pub const SECRET_TTL: Duration = Duration::from_secs(30);

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

    /// The classification of a queue error.
    pub fn from_queue(e: QueueError) -> Self {
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

/// (namespace, Secret name, key) -> (URL, read at).
type SecretCache = HashMap<(String, String, String), (String, Instant)>;

/// The pools' Redis URLs: `spec.queue.redis.url`, or read from the Secret that
/// `urlSecretRef` names, kept for a while (a Secret read per pool per poll would be most
/// of the operator's API traffic), forgotten when it stops working or the Secret changes.
pub struct SecretUrls {
    secrets: Mutex<SecretCache>,
    ttl: Duration,
}

impl Default for SecretUrls {
    fn default() -> Self {
        Self::new(SECRET_TTL)
    }
}

impl SecretUrls {
    /// URLs from Secrets are read again after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        SecretUrls {
            secrets: Mutex::new(HashMap::new()),
            ttl,
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
            && at.elapsed() < self.ttl
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
