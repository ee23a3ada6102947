//! The two ways of scaling a pool that the simulator compares: workpool's operator
//! (this crate's [`autoscale`](crate::autoscale) policy) and a model of KEDA driving an
//! HPA on a Deployment.

use std::time::Duration;

use crate::autoscale::{AutoscaleSpec, Autoscaler, Backlog, Observation};
use crate::planner::{VictimKey, choose_victims};

use super::PoolSettings;

/// What a controller sees of the pool and its queue at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueView {
    /// Milliseconds since the start of the run.
    pub now_ms: u64,
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Entries delivered and not acknowledged (in flight, or held by a dead worker).
    pub pending: u64,
    /// Whether the metrics can be read now.
    pub readable: bool,
    /// Pods not being deleted.
    pub live_pods: u32,
    /// Of those, pods that are ready.
    pub ready_pods: u32,
}

/// A pod as victim choice sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSnapshot {
    /// Unique, increasing with creation.
    pub id: u64,
    /// When it was created (ms).
    pub created_ms: u64,
    /// When it became (or becomes) ready (ms).
    pub ready_ms: u64,
    /// Tasks it holds.
    pub in_flight: u32,
}

/// Which scaler drives the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContenderKind {
    /// workpool: backlog = lag + pending, polled every 5 s, woken from zero by the
    /// first task, the operator's victim order (idle first), victims drain (finish
    /// their tasks, take no new one) and count against the maximum until they leave, a
    /// scale-up takes draining pods back first.
    Workpool,
    /// KEDA (lag only) + HPA: 30 s polling, 15 s HPA sync, ReplicaSet victim choice,
    /// a killed worker's task returns after the visibility timeout.
    KedaLag,
    /// As `KedaLag`, with `cooldownPeriod` set to workpool's `scaleToZeroDelaySeconds`
    /// instead of KEDA's default 300 s, so that the defaults' difference does not count.
    KedaLagMatchedCooldown,
    /// As `KedaLag`, with backlog = pending entries only (and `minReplicaCount: 1`,
    /// because a pool at zero has no pending entries and would never wake).
    KedaPending,
}

impl ContenderKind {
    /// All contenders, in table order.
    pub const ALL: [ContenderKind; 4] = [
        Self::Workpool,
        Self::KedaLag,
        Self::KedaLagMatchedCooldown,
        Self::KedaPending,
    ];

    /// Name for tables and legends.
    pub fn label(self) -> &'static str {
        match self {
            Self::Workpool => "workpool",
            Self::KedaLag => "KEDA+HPA (lag)",
            Self::KedaLagMatchedCooldown => "KEDA+HPA (lag, cooldown = our delay)",
            Self::KedaPending => "KEDA+HPA (pending)",
        }
    }

    /// Plot colour.
    pub fn colour(self) -> &'static str {
        match self {
            Self::Workpool => "#1b7837",
            Self::KedaLag => "#c51b7d",
            Self::KedaLagMatchedCooldown => "#e08214",
            Self::KedaPending => "#2166ac",
        }
    }
}

/// workpool's polling interval (the design's default `pollIntervalSeconds`).
pub const WORKPOOL_POLL_MS: u64 = 5_000;
/// How long after the first task the operator, blocked on the stream while the pool is
/// at zero, evaluates the policy.
pub const WORKPOOL_WAKE_MS: u64 = 500;
/// KEDA's default `pollingInterval`.
pub const KEDA_POLLING_MS: u64 = 30_000;
/// The HPA controller's default sync period.
pub const HPA_SYNC_MS: u64 = 15_000;
/// KEDA's default `cooldownPeriod`.
pub const KEDA_COOLDOWN_MS: u64 = 300_000;
/// KEDA's fallback applies after this many failed polls (its `failureThreshold`).
pub const KEDA_FAILURE_THRESHOLD: u32 = 3;

/// A scaler: decides the replica target and, on scale-in, which pods go.
pub trait Contender {
    /// Called every simulation tick; returns the replica target.
    fn tick(&mut self, view: &QueueView) -> u32;
    /// Chooses `count` of `pods` to delete.
    fn choose_victims(&self, pods: &[PodSnapshot], now_ms: u64, count: usize) -> Vec<u64>;
    /// Whether pods still terminating count against `maxReplicas`.
    fn terminating_pods_count_against_max(&self) -> bool;
    /// Whether a worker cut off at the end of its grace period hands its task back at
    /// once (true) or leaves it to be reclaimed after the visibility timeout (false).
    fn hands_back_on_shutdown(&self) -> bool;
    /// Whether victims drain (stop taking tasks, leave once idle, never cut short) and a
    /// scale-up takes draining pods back before it creates any (workpool's operator), or
    /// are deleted with a grace period (a ReplicaSet).
    fn drains(&self) -> bool;
    /// How many times the replica target changed.
    fn scale_events(&self) -> u64;
}

/// Builds the contender of `kind` for a pool; `phase_ms` staggers its polling.
pub fn contender(kind: ContenderKind, pool: &PoolSettings, phase_ms: u64) -> Box<dyn Contender> {
    match kind {
        ContenderKind::Workpool => Box::new(WorkpoolScaler::new(pool, phase_ms)),
        ContenderKind::KedaLag => Box::new(KedaHpa::new(
            pool,
            KedaMetric::Lag,
            KEDA_COOLDOWN_MS,
            phase_ms,
        )),
        ContenderKind::KedaLagMatchedCooldown => Box::new(KedaHpa::new(
            pool,
            KedaMetric::Lag,
            u64::from(pool.scale_to_zero_delay_seconds) * 1_000,
            phase_ms,
        )),
        ContenderKind::KedaPending => Box::new(KedaHpa::new(
            pool,
            KedaMetric::Pending,
            KEDA_COOLDOWN_MS,
            phase_ms,
        )),
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// workpool's operator, as far as scaling goes.
pub struct WorkpoolScaler {
    spec: AutoscaleSpec,
    autoscaler: Autoscaler,
    target: u32,
    next_poll_ms: u64,
    wake_at_ms: Option<u64>,
    scale_events: u64,
}

impl WorkpoolScaler {
    fn new(pool: &PoolSettings, phase_ms: u64) -> Self {
        let mut spec = AutoscaleSpec::new(
            pool.min_replicas,
            pool.max_replicas,
            pool.target_backlog_per_replica,
        );
        spec.scale_to_zero_delay_seconds = pool.scale_to_zero_delay_seconds;
        spec.fallback_replicas = pool.fallback_replicas;
        Self {
            spec,
            autoscaler: Autoscaler::new(),
            target: pool.min_replicas,
            next_poll_ms: phase_ms % WORKPOOL_POLL_MS,
            wake_at_ms: None,
            scale_events: 0,
        }
    }
}

impl Contender for WorkpoolScaler {
    fn tick(&mut self, view: &QueueView) -> u32 {
        let now = view.now_ms;
        if self.target == 0 && view.readable && view.lag > 0 && self.wake_at_ms.is_none() {
            self.wake_at_ms = Some(now + WORKPOOL_WAKE_MS);
        }
        let woken = self.wake_at_ms.is_some_and(|at| now >= at);
        if now < self.next_poll_ms && !woken {
            return self.target;
        }
        if now >= self.next_poll_ms {
            self.next_poll_ms += WORKPOOL_POLL_MS;
        }
        self.wake_at_ms = None;
        let backlog = if view.readable {
            Backlog::Known(view.lag + view.pending)
        } else {
            Backlog::Unreadable
        };
        let decision = self.autoscaler.evaluate(
            &self.spec,
            &Observation {
                now: millis(now),
                backlog,
                current_replicas: self.target,
                ready_replicas: view.ready_pods,
            },
        );
        if decision.desired_replicas != self.target {
            self.scale_events += 1;
            self.target = decision.desired_replicas;
        }
        self.target
    }

    fn choose_victims(&self, pods: &[PodSnapshot], now_ms: u64, count: usize) -> Vec<u64> {
        // The operator's own order (crate::planner::victim_order).
        let names: Vec<String> = pods.iter().map(|pod| pod.id.to_string()).collect();
        let keys: Vec<VictimKey<'_>> = pods
            .iter()
            .zip(&names)
            .map(|(pod, name)| VictimKey {
                name,
                started: pod.ready_ms <= now_ms,
                held: u64::from(pod.in_flight),
                ready: pod.ready_ms <= now_ms,
                created: pod.created_ms,
            })
            .collect();
        choose_victims(&keys, count)
            .into_iter()
            .filter_map(|name| name.parse().ok())
            .collect()
    }

    fn terminating_pods_count_against_max(&self) -> bool {
        true
    }

    fn hands_back_on_shutdown(&self) -> bool {
        true
    }

    fn drains(&self) -> bool {
        true
    }

    fn scale_events(&self) -> u64 {
        self.scale_events
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KedaMetric {
    Lag,
    Pending,
}

/// KEDA's scaling loop (activation, cooldown to zero, fallback) in front of an HPA
/// (the same HPA algorithm as ours, fed KEDA's metric) and a Deployment.
pub struct KedaHpa {
    metric: KedaMetric,
    cooldown_ms: u64,
    hpa_spec: AutoscaleSpec,
    hpa: Autoscaler,
    min_replicas: u32,
    fallback_replicas: Option<u32>,
    replicas: u32,
    next_keda_ms: u64,
    next_hpa_ms: u64,
    last_active_ms: Option<u64>,
    failures: u32,
    scale_events: u64,
}

impl KedaHpa {
    fn new(pool: &PoolSettings, metric: KedaMetric, cooldown_ms: u64, phase_ms: u64) -> Self {
        let min_replicas = match metric {
            KedaMetric::Lag => pool.min_replicas,
            KedaMetric::Pending => pool.min_replicas.max(1),
        };
        // The HPA KEDA creates: minReplicas at least 1, HPA's default behavior.
        let hpa_spec = AutoscaleSpec::new(
            min_replicas.max(1),
            pool.max_replicas,
            pool.target_backlog_per_replica,
        );
        Self {
            metric,
            cooldown_ms,
            hpa_spec,
            hpa: Autoscaler::new(),
            min_replicas,
            fallback_replicas: pool.fallback_replicas,
            replicas: min_replicas,
            next_keda_ms: phase_ms % KEDA_POLLING_MS,
            next_hpa_ms: (phase_ms / 2) % HPA_SYNC_MS,
            last_active_ms: None,
            failures: 0,
            scale_events: 0,
        }
    }

    fn set_replicas(&mut self, replicas: u32) {
        if replicas != self.replicas {
            self.scale_events += 1;
            self.replicas = replicas;
        }
    }

    fn metric(&self, view: &QueueView) -> u64 {
        match self.metric {
            KedaMetric::Lag => view.lag,
            KedaMetric::Pending => view.pending,
        }
    }
}

impl Contender for KedaHpa {
    fn tick(&mut self, view: &QueueView) -> u32 {
        let now = view.now_ms;
        if now >= self.next_keda_ms {
            self.next_keda_ms += KEDA_POLLING_MS;
            if view.readable {
                self.failures = 0;
                if self.metric(view) > 0 {
                    self.last_active_ms = Some(now);
                    if self.replicas == 0 {
                        self.set_replicas(self.min_replicas.max(1));
                    }
                } else if self.replicas > 0
                    && self.min_replicas == 0
                    && self
                        .last_active_ms
                        .is_none_or(|at| now.saturating_sub(at) >= self.cooldown_ms)
                {
                    self.set_replicas(0);
                }
            } else {
                self.failures = self.failures.saturating_add(1);
                if let Some(fallback) = self.fallback_replicas
                    && self.failures >= KEDA_FAILURE_THRESHOLD
                {
                    self.set_replicas(
                        fallback
                            .min(self.hpa_spec.max_replicas)
                            .max(self.min_replicas),
                    );
                }
            }
        }
        if now >= self.next_hpa_ms {
            self.next_hpa_ms += HPA_SYNC_MS;
            // HPA is inactive at zero replicas, and holds the count when its metric fails.
            if self.replicas > 0 && view.readable {
                let decision = self.hpa.evaluate(
                    &self.hpa_spec,
                    &Observation {
                        now: millis(now),
                        backlog: Backlog::Known(self.metric(view)),
                        current_replicas: self.replicas,
                        // External metrics: HPA divides by the replica count, ready or not.
                        ready_replicas: self.replicas,
                    },
                );
                self.set_replicas(decision.desired_replicas);
            }
        }
        self.replicas
    }

    /// A ReplicaSet's choice: pods not ready first, then those ready for the shortest
    /// time, then the newest; how busy a pod is plays no part.
    fn choose_victims(&self, pods: &[PodSnapshot], now_ms: u64, count: usize) -> Vec<u64> {
        let mut ranked: Vec<&PodSnapshot> = pods.iter().collect();
        ranked.sort_by(|a, b| {
            let a_ready = a.ready_ms <= now_ms;
            let b_ready = b.ready_ms <= now_ms;
            a_ready
                .cmp(&b_ready)
                .then(b.ready_ms.cmp(&a.ready_ms))
                .then(b.created_ms.cmp(&a.created_ms))
                .then(b.id.cmp(&a.id))
        });
        ranked.into_iter().take(count).map(|pod| pod.id).collect()
    }

    fn terminating_pods_count_against_max(&self) -> bool {
        false
    }

    fn hands_back_on_shutdown(&self) -> bool {
        false
    }

    fn drains(&self) -> bool {
        false
    }

    fn scale_events(&self) -> u64 {
        self.scale_events
    }
}
