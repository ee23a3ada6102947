//! Fault injection: error answers at a rate, response delays, closing watch streams.
//!
//! Programmatic through [`FaultInjector`], and over HTTP for people:
//! `POST /_test/faults` with a [`FaultConfig`] JSON body replaces the rules (and
//! `"closeWatches": true` closes every open watch now), `GET` shows them, `DELETE`
//! clears them.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One rule: requests matching `verbs` and `resources` (empty = any) get `status`
/// with probability `rate`, at most `count` times (None = unlimited).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// Verbs: get, list, watch, create, update, patch, delete, deletecollection.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resources by plural name, optionally with subresource (`pods`, `widgets/status`).
    /// A bare resource matches its subresources too.
    #[serde(default)]
    pub resources: Vec<String>,
    /// HTTP status to answer: 500, 429 (with Retry-After), 409, or any other 4xx/5xx.
    pub status: u16,
    /// Probability in [0, 1] (default 1).
    #[serde(default = "one")]
    pub rate: f64,
    /// How many times the rule may fire; None = forever.
    #[serde(default)]
    pub count: Option<u64>,
    /// Retry-After seconds for 429 (default 1).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// The full fault configuration (the HTTP body of `/_test/faults`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultConfig {
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Delay every API response by this many milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// POST only: close every open watch stream now.
    #[serde(default, skip_serializing)]
    pub close_watches: bool,
}

/// What a matching rule decided for one request.
#[derive(Debug, Clone)]
pub struct InjectedFault {
    pub status: u16,
    pub retry_after_seconds: Option<u64>,
}

/// Handle on the running server's faults. Cheap to clone.
#[derive(Clone)]
pub struct FaultInjector {
    inner: Arc<Mutex<FaultConfig>>,
    close_tx: Arc<watch::Sender<u64>>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultInjector {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        FaultInjector {
            inner: Arc::new(Mutex::new(FaultConfig::default())),
            close_tx: Arc::new(tx),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultConfig> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule.
    pub fn add(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Answers `status` to every request with one of `verbs` on one of `resources`
    /// (empty = any), `count` times (None = until cleared).
    pub fn fail(&self, verbs: &[&str], resources: &[&str], status: u16, count: Option<u64>) {
        self.add(FaultRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            status,
            rate: 1.0,
            count,
            retry_after_seconds: None,
        });
    }

    /// Delays every response by `ms` milliseconds (0 = none).
    pub fn set_delay_ms(&self, ms: u64) {
        self.lock().delay_ms = ms;
    }

    /// Removes all rules and the delay.
    pub fn clear(&self) {
        *self.lock() = FaultConfig::default();
    }

    /// Replaces the whole configuration (and closes watches if asked).
    pub fn set(&self, cfg: FaultConfig) {
        if cfg.close_watches {
            self.close_watches();
        }
        *self.lock() = FaultConfig {
            close_watches: false,
            ..cfg
        };
    }

    pub fn config(&self) -> FaultConfig {
        self.lock().clone()
    }

    /// Ends every watch stream open right now (clients see the stream close).
    pub fn close_watches(&self) {
        self.close_tx.send_modify(|g| *g += 1);
    }

    pub(crate) fn close_signal(&self) -> watch::Receiver<u64> {
        self.close_tx.subscribe()
    }

    pub(crate) fn delay_ms(&self) -> u64 {
        self.lock().delay_ms
    }

    /// Decides whether this request fails (and consumes one `count`).
    pub(crate) fn check(
        &self,
        verb: &str,
        resource: &str,
        sub: Option<&str>,
    ) -> Option<InjectedFault> {
        let mut cfg = self.lock();
        let full = match sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_string(),
        };
        let mut rng = rand::rng();
        for rule in cfg.rules.iter_mut() {
            if rule.count == Some(0) {
                continue;
            }
            let verb_ok = rule.verbs.is_empty() || rule.verbs.iter().any(|v| v == verb);
            let res_ok = rule.resources.is_empty()
                || rule.resources.iter().any(|r| *r == full || *r == resource);
            if !(verb_ok && res_ok) {
                continue;
            }
            if rule.rate < 1.0 && rng.random::<f64>() >= rule.rate {
                continue;
            }
            if let Some(c) = rule.count.as_mut() {
                *c -= 1;
            }
            return Some(InjectedFault {
                status: rule.status,
                retry_after_seconds: rule.retry_after_seconds,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_and_count_down() {
        let f = FaultInjector::new();
        f.fail(&["create"], &["pods"], 500, Some(2));
        assert!(f.check("get", "pods", None).is_none());
        assert!(f.check("create", "configmaps", None).is_none());
        assert_eq!(f.check("create", "pods", None).map(|x| x.status), Some(500));
        assert!(f.check("create", "pods", Some("status")).is_some());
        assert!(f.check("create", "pods", None).is_none());
        let cfg: FaultConfig =
            serde_json::from_str(r#"{"rules":[{"status":429,"rate":0.0}],"delayMs":5}"#)
                .expect("parses");
        f.set(cfg);
        assert!(f.check("get", "pods", None).is_none());
        assert_eq!(f.delay_ms(), 5);
    }
}
