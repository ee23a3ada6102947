//! What reaching a pool's queue needs and how it fails: the pool's Redis target
//! ([`QueueTargets`]: its URL from the spec or a Secret, with the TLS material of its
//! Secrets, the same the pods get; standalone, Sentinel or Cluster, see
//! `workpool_worker::target`) and the classification of errors for the `QueueReachable`
//! condition ([`ProbeError::reason`]) and the metrics ([`ProbeError::metric_label`]);
//! their messages never contain the URL (it may carry a password). The reads themselves
//! happen in [`crate::hub`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use workpool_worker::queue::QueueError;
use workpool_worker::target::{Target, Tls};

use crate::crd::WorkPool;

/// How long a value read from a Secret (the Redis URL, a CA, a client certificate) is
/// reused before the Secret is read again, by default (`--secret-refresh`).
pub const SECRET_TTL: Duration = Duration::from_secs(30);

/// Why the queue could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The Secret or its key is missing, or it cannot be read.
    #[error("{0}")]
    Secret(String),
    /// The operator's credentials may not read the Secret (403). Kept apart from
    /// `Secret` so a tool running with the caller's credentials (kubectl-workpool) can
    /// say who was refused.
    #[error("the operator may not read Secret {name:?}: {message}")]
    SecretForbidden { name: String, message: String },
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
            ProbeError::Secret(_) | ProbeError::SecretForbidden { .. } => "SecretUnavailable",
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
            ProbeError::Secret(_) | ProbeError::SecretForbidden { .. } => "secret",
            ProbeError::InvalidUrl => "invalid_url",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Auth(_) => "auth",
            ProbeError::Refused(_) => "refused",
            ProbeError::Protocol(_) => "protocol",
            ProbeError::Tls(_) => "tls",
            ProbeError::Invalid(_) => "invalid_spec",
        }
    }

    /// The classification of a queue error.
    pub fn from_queue(e: QueueError) -> Self {
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

/// (namespace, Secret name, key) -> (value, read at).
type SecretCache = HashMap<(String, String, String), (Vec<u8>, Instant)>;

/// The most targets kept built; past it they are all dropped (old targets of changed
/// Secrets or URLs go with them) and built again as pools ask.
const MAX_TARGETS: usize = 256;

/// The pools' Redis targets: the URL (`spec.queue.redis.url`, or the Secret that
/// `urlSecretRef` names) with the TLS material of `tls.caSecretRef` and
/// `tls.clientCertSecretRef`. Secret values are kept for a while (a Secret read per pool
/// per poll would be most of the operator's API traffic) and forgotten when they stop
/// working or the Secret changes; a target is built once per distinct URL + material.
pub struct QueueTargets {
    secrets: Mutex<SecretCache>,
    targets: Mutex<HashMap<String, Target>>,
    /// What the last read of each Secret (namespace, name) found: its resourceVersion,
    /// or [`SECRET_ABSENT`] / [`SECRET_FORBIDDEN`]. A Secret that reads otherwise now
    /// has changed under the pools using it (`controller::secret_polls`).
    versions: Mutex<HashMap<(String, String), String>>,
    ttl: Duration,
}

/// [`QueueTargets::version_read`] of a Secret that was not found.
pub const SECRET_ABSENT: &str = "absent";
/// [`QueueTargets::version_read`] of a Secret the operator may not read.
pub const SECRET_FORBIDDEN: &str = "forbidden";

impl Default for QueueTargets {
    fn default() -> Self {
        Self::new(SECRET_TTL)
    }
}

impl QueueTargets {
    /// Secrets are read again after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        QueueTargets {
            secrets: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// What the last read of Secret `ns`/`name` found (its resourceVersion, or
    /// [`SECRET_ABSENT`] / [`SECRET_FORBIDDEN`]); `None` if no reconcile read it.
    pub fn version_read(&self, ns: &str, name: &str) -> Option<String> {
        let v = self.versions.lock().ok()?;
        v.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// Forgets the versions read of Secrets no pool names any more.
    pub fn retain_versions(&self, named: impl Fn(&(String, String)) -> bool) {
        if let Ok(mut v) = self.versions.lock() {
            v.retain(|k, _| named(k));
        }
    }

    pub(crate) fn read(&self, ns: &str, name: &str, version: &str) {
        if let Ok(mut v) = self.versions.lock() {
            v.insert((ns.to_string(), name.to_string()), version.to_string());
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
            if m.len() >= MAX_TARGETS {
                m.clear();
            }
            m.insert(key, target.clone());
        }
        Ok(target)
    }

    /// A key of a Secret in the pool's namespace, cached for the refresh period.
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
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.read(&ns, name, SECRET_ABSENT);
                return Err(ProbeError::Secret(format!(
                    "Secret {name:?} not found in namespace {ns:?}"
                )));
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                self.read(&ns, name, SECRET_FORBIDDEN);
                return Err(ProbeError::SecretForbidden {
                    name: name.to_string(),
                    message: s.message,
                });
            }
            Err(e) => {
                return Err(ProbeError::Secret(format!("reading Secret {name:?}: {e}")));
            }
        };
        self.read(
            &ns,
            name,
            secret
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default(),
        );
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
                    .map(|s| s.as_bytes().to_vec())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_labels_are_known() {
        let all = [
            ProbeError::Secret("x".into()),
            ProbeError::SecretForbidden {
                name: "x".into(),
                message: "forbidden".into(),
            },
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
