//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's algorithm:
//!
//! - a candidate takes the Lease when it does not exist, has no holder, or its record
//!   (holder, renewTime) has not changed for `lease_duration` *as seen by this process's
//!   own clock* (so clock skew between machines does not matter);
//! - every write is a compare-and-swap on `resourceVersion`, so two candidates never both
//!   win;
//! - the leader renews every `retry_period`; when it could not renew for `renew_deadline`
//!   it must stop acting (the caller exits);
//! - on shutdown the leader releases the Lease (empty holder, duration 1 s) so that a
//!   standby takes over at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// A leader that has not renewed for this long is replaced.
    pub lease_duration: Duration,
    /// The leader stops acting when it could not renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    pub retry_period: Duration,
}

/// Whether this process may act now. With leader election it is true only while the
/// Lease was renewed (the renewal *sent*) less than `renew_deadline` ago by this process's
/// monotonic clock, which runs on while the process is stopped: every write checks it, so
/// a leader frozen past its Lease writes nothing once it resumes, before its renewal loop
/// has even noticed that another replica took over.
#[derive(Clone, Debug)]
pub struct Leadership {
    valid_until: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Leadership {
    /// No election: always leading.
    pub fn always() -> Leadership {
        Leadership { valid_until: None }
    }

    /// A replica that does not lead (a standby, or one that lost its Lease).
    pub fn lost() -> Leadership {
        Leadership {
            valid_until: Some(Arc::new(Mutex::new(None))),
        }
    }

    /// Whether this process may write now.
    pub fn is_leading(&self) -> bool {
        match &self.valid_until {
            None => true,
            Some(v) => v
                .lock()
                .map(|g| g.is_some_and(|until| Instant::now() < until))
                .unwrap_or(false),
        }
    }

    fn set(&self, until: Option<Instant>) {
        if let Some(v) = &self.valid_until
            && let Ok(mut g) = v.lock()
        {
            *g = until;
        }
    }
}

/// A candidate for leadership.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen and when this process first saw it.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    leadership: Leadership,
}

impl LeaderElector {
    /// A candidate using `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            leadership: Leadership {
                valid_until: Some(Arc::new(Mutex::new(None))),
            },
        }
    }

    /// The handle every write checks.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn spec_for_me(&self, old: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let me = &self.cfg.identity;
        let held_by_me = old.and_then(|s| s.holder_identity.as_ref()) == Some(me);
        LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: if held_by_me {
                old.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                old.and_then(|s| s.lease_transitions).unwrap_or(0)
                    + i32::from(!held_by_me && old.is_some()),
            ),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew. `Ok(true)`: this process holds the Lease now, and
    /// may act until `renew_deadline` after the attempt started.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let r = self.attempt().await;
        match &r {
            Ok(true) => self.leadership.set(Some(started + self.cfg.renew_deadline)),
            Ok(false) => self.leadership.set(None),
            Err(_) => {}
        }
        r
    }

    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let existing = self.api.get_opt(&self.cfg.name).await?;
        let Some(lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec_for_me(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let now = Instant::now();
        let seen_at = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => {
                self.observed = Some((record.0.clone(), record.1.clone(), now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.cfg.lease_duration);
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        if let Some(h) = &holder
            && !mine
            && now.duration_since(seen_at) < duration
        {
            debug!(holder = %h, "the lease is held by another candidate");
            return Ok(false);
        }
        let mut new = lease.clone();
        new.spec = Some(self.spec_for_me(Some(&spec)));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &new)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(identity = %self.cfg.identity, previous = ?holder, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the Lease (or `stop` resolves: `false`).
    pub async fn acquire(
        &mut self,
        mut stop: impl std::future::Future<Output = ()> + Unpin,
    ) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot read or write the leader lease"),
            }
            tokio::select! {
                _ = &mut stop => return false,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Renews every `retry_period` until `stop` resolves (`true`) or the Lease could not
    /// be renewed for `renew_deadline` or another holder took it (`false`: leadership lost).
    pub async fn hold(&mut self, mut stop: impl std::future::Future<Output = ()> + Unpin) -> bool {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => return true,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
            match tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) => {
                    warn!("another candidate holds the leader lease");
                    return false;
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
            if last_renew.elapsed() >= self.cfg.renew_deadline {
                warn!(deadline = ?self.cfg.renew_deadline, "could not renew the leader lease in time");
                self.leadership.set(None);
                return false;
            }
        }
    }

    /// Gives the Lease up if this process holds it (empty holder, 1 s duration).
    pub async fn release(&mut self) {
        self.leadership.set(None);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the leader lease"),
            Err(e) => warn!(error = %e, "cannot release the leader lease"),
        }
    }
}
