//! Prometheus metrics of the operator (documented in `docs/metrics.md`; dashboards are
//! written against these exact names and labels).

use prometheus::{Encoder, Histogram, HistogramOpts, IntGauge, Registry, TextEncoder};

mod lean;
pub use lean::{Family, LeanVec};

/// A gauge with labels (one series per pool, or per pool and partition).
pub type IntGaugeVec = LeanVec<i64>;
/// A counter with labels.
pub type IntCounterVec = LeanVec<u64>;

/// Reasons of `workpool_reconcile_errors_total` (see [`crate::Error::metric_label`]).
pub const RECONCILE_ERROR_REASONS: &[&str] = &[
    "api",
    "conflict",
    "forbidden",
    "quota",
    "not_found",
    "invalid",
    "invalid_spec",
    "serialization",
    "cleanup",
    "not_leader",
];

/// Reasons of `workpool_queue_probe_errors_total` (see [`crate::probe::ProbeError::metric_label`]).
pub const PROBE_ERROR_REASONS: &[&str] = &[
    "unreachable",
    "auth",
    "refused",
    "invalid_url",
    "secret",
    "protocol",
    "tls",
    "invalid_spec",
];

/// All operator metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `workpool_desired_replicas`
    pub desired: IntGaugeVec,
    /// `workpool_replicas`
    pub replicas: IntGaugeVec,
    /// `workpool_ready_replicas`
    pub ready: IntGaugeVec,
    /// `workpool_busy_replicas`
    pub busy: IntGaugeVec,
    /// `workpool_queue_backlog`
    pub backlog: IntGaugeVec,
    /// `workpool_queue_pending`
    pub pending: IntGaugeVec,
    /// `workpool_queue_dead_letters`
    pub dead_letters: IntGaugeVec,
    /// `workpool_queue_oldest_pending_seconds`
    pub oldest_pending: IntGaugeVec,
    /// `workpool_queue_up`
    pub queue_up: IntGaugeVec,
    /// `workpool_scale_events_total`
    pub scale_events: IntCounterVec,
    /// `workpool_pod_replacements_total`
    pub replacements: IntCounterVec,
    /// `workpool_reconcile_errors_total`
    pub reconcile_errors: IntCounterVec,
    /// `workpool_queue_probe_errors_total`
    pub probe_errors: IntCounterVec,
    /// `workpool_reconcile_duration_seconds`
    pub reconcile_duration: Histogram,
    /// `workpool_leader`
    pub leader: IntGauge,
    /// `workpool_queue_probes_total`
    pub probes: IntCounterVec,
    /// `workpool_scale_decisions_total`
    pub scale_decisions: IntCounterVec,
    /// `workpool_wakes_total`
    pub wakes: IntCounterVec,
    /// `workpool_wake_watched_pools`
    pub wake_watched_pools: IntGauge,
    /// `workpool_wake_errors_total`
    pub wake_errors: IntCounterVec,
    /// `workpool_pod_deletion_cost_updates_total`
    pub deletion_cost_updates: IntCounterVec,
    /// `workpool_queue_partition_backlog` (labels namespace, workpool, partition)
    pub partition_backlog: IntGaugeVec,
    /// `workpool_queue_partition_pending` (labels namespace, workpool, partition)
    pub partition_pending: IntGaugeVec,
    /// Partitions reported per pool, to remove their series.
    partitions_seen:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), usize>>>,
    /// `workpool_draining_replicas`
    pub draining: IntGaugeVec,
    /// `workpool_drains_total`
    pub drains: IntCounterVec,
    /// `workpool_pod_signal_updates_total`
    pub signal_updates: IntCounterVec,
}

const POOL: &[&str] = &["namespace", "workpool"];

fn gauge(name: &'static str, help: &'static str) -> IntGaugeVec {
    LeanVec::new(name, help, POOL)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "workpool_reconcile_duration_seconds",
                "Duration of one reconcile of one WorkPool",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        r.register(Box::new(reconcile_duration.clone()))?;
        let leader = IntGauge::new(
            "workpool_leader",
            "1 on the operator replica that holds the leader Lease and acts, else 0",
        )?;
        r.register(Box::new(leader.clone()))?;
        let wake_watched_pools = IntGauge::new(
            "workpool_wake_watched_pools",
            "Autoscaled pools at zero whose stream the operator watches for a first task",
        )?;
        r.register(Box::new(wake_watched_pools.clone()))?;
        const PARTITION: &[&str] = &["namespace", "workpool", "partition"];
        Ok(Metrics {
            partition_backlog: LeanVec::new(
                "workpool_queue_partition_backlog",
                "Tasks waiting or in flight in one partition of the pool (the pool's backlog is their sum)",
                PARTITION,
            ),
            partition_pending: LeanVec::new(
                "workpool_queue_partition_pending",
                "Tasks delivered and not yet acknowledged in one partition of the pool",
                PARTITION,
            ),
            partitions_seen: Default::default(),
            probes: LeanVec::new(
                "workpool_queue_probes_total",
                "Reads of the pool's queue statistics, by what triggered them",
                &["namespace", "workpool", "trigger"],
            ),
            wakes: LeanVec::new(
                "workpool_wakes_total",
                "New tasks noticed for the pool while it was at zero, each \
                 triggering a reconcile at once",
                POOL,
            ),
            deletion_cost_updates: LeanVec::new(
                "workpool_pod_deletion_cost_updates_total",
                "Writes of controller.kubernetes.io/pod-deletion-cost on the pool's pods \
                 (with the busy/idle annotations)",
                POOL,
            ),
            scale_decisions: LeanVec::new(
                "workpool_scale_decisions_total",
                "Changes of the pool's desired replicas, by direction and by what decided \
                 or limited the new count",
                &["namespace", "workpool", "direction", "reason"],
            ),
            wake_watched_pools,
            wake_errors: LeanVec::new(
                "workpool_wake_errors_total",
                "Failed connections or reads of the wake-from-zero watcher, by reason",
                &["reason"],
            ),
            draining: gauge(
                "workpool_draining_replicas",
                "Pods told to stop taking tasks that finish what they hold before they are deleted",
            ),
            drains: LeanVec::new(
                "workpool_drains_total",
                "Drains of the pool's pods, by outcome (started, cancelled, completed, timed_out)",
                &["namespace", "workpool", "outcome"],
            ),
            signal_updates: LeanVec::new(
                "workpool_pod_signal_updates_total",
                "Writes of the busy/idle annotations (safe-to-evict, do-not-disrupt, \
                 pod-deletion-cost) on the pool's pods, by the state written",
                &["namespace", "workpool", "state"],
            ),
            desired: gauge("workpool_desired_replicas", "Pods the operator wants"),
            replicas: gauge(
                "workpool_replicas",
                "Pods of the pool that are not terminating",
            ),
            ready: gauge("workpool_ready_replicas", "Pods of the pool that are ready"),
            busy: gauge("workpool_busy_replicas", "Pods whose consumer holds a task"),
            backlog: gauge(
                "workpool_queue_backlog",
                "Tasks waiting or in flight (lag + pending)",
            ),
            pending: gauge(
                "workpool_queue_pending",
                "Tasks delivered and not yet acknowledged",
            ),
            dead_letters: gauge(
                "workpool_queue_dead_letters",
                "Entries in the dead-letter stream",
            ),
            oldest_pending: gauge(
                "workpool_queue_oldest_pending_seconds",
                "Age of the oldest pending task since it was enqueued (0 when none)",
            ),
            queue_up: gauge(
                "workpool_queue_up",
                "1 when the last queue probe succeeded, else 0",
            ),
            scale_events: LeanVec::new(
                "workpool_scale_events_total",
                "Changes of the pool's size to follow a new desired count, by direction",
                &["namespace", "workpool", "direction"],
            ),
            replacements: LeanVec::new(
                "workpool_pod_replacements_total",
                "Pods replaced because they failed, succeeded, were evicted or deleted",
                &["namespace", "workpool", "reason"],
            ),
            reconcile_errors: LeanVec::new(
                "workpool_reconcile_errors_total",
                "Reconciles that failed, by reason",
                &["namespace", "workpool", "reason"],
            ),
            probe_errors: LeanVec::new(
                "workpool_queue_probe_errors_total",
                "Queue probes that failed, by reason",
                &["namespace", "workpool", "reason"],
            ),
            reconcile_duration,
            leader,
            registry: r,
        })
    }

    /// Every labelled metric (the registry holds the others); each a handle on the
    /// same series.
    fn families(&self) -> [Box<dyn Family>; 23] {
        [
            Box::new(self.desired.clone()),
            Box::new(self.replicas.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.busy.clone()),
            Box::new(self.backlog.clone()),
            Box::new(self.pending.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.oldest_pending.clone()),
            Box::new(self.queue_up.clone()),
            Box::new(self.draining.clone()),
            Box::new(self.partition_backlog.clone()),
            Box::new(self.partition_pending.clone()),
            Box::new(self.scale_events.clone()),
            Box::new(self.replacements.clone()),
            Box::new(self.reconcile_errors.clone()),
            Box::new(self.probe_errors.clone()),
            Box::new(self.probes.clone()),
            Box::new(self.scale_decisions.clone()),
            Box::new(self.wakes.clone()),
            Box::new(self.wake_errors.clone()),
            Box::new(self.deletion_cost_updates.clone()),
            Box::new(self.drains.clone()),
            Box::new(self.signal_updates.clone()),
        ]
    }

    /// The text exposition of every metric, sorted by name (as the prometheus crate's
    /// registry sorts).
    pub fn render(&self) -> String {
        self.render_families().collect()
    }

    /// The text exposition, one metric at a time, each rendered only when it is asked
    /// for: `/metrics` streams it, so a scrape holds one metric's text at a time instead
    /// of the whole (12 MB at 10,000 pools).
    pub fn render_families(&self) -> impl Iterator<Item = String> + Send + 'static {
        enum Rendered {
            Lean(Box<dyn Family>),
            Registered(prometheus::proto::MetricFamily),
        }
        let mut families: Vec<(String, Rendered)> = self
            .families()
            .into_iter()
            .map(|f| (f.name().to_string(), Rendered::Lean(f)))
            .collect();
        families.extend(
            self.registry
                .gather()
                .into_iter()
                .map(|f| (f.name().to_string(), Rendered::Registered(f))),
        );
        families.sort_by(|a, b| a.0.cmp(&b.0));
        families.into_iter().map(|(_, family)| {
            let mut out = String::new();
            match family {
                Rendered::Lean(f) => f.render_into(&mut out),
                Rendered::Registered(f) => {
                    let mut buf = Vec::new();
                    match TextEncoder::new().encode(&[f], &mut buf) {
                        Ok(()) => out.push_str(&String::from_utf8_lossy(&buf)),
                        Err(e) => out.push_str(&format!("# encoding failed: {e}\n")),
                    }
                }
            }
            out
        })
    }

    /// Sets the per-partition gauges from a probe of the pool (its `partitions`).
    pub fn set_partitions(
        &self,
        namespace: &str,
        name: &str,
        st: &workpool_worker::queue::QueueStats,
    ) {
        for (i, p) in st.partitions.iter().enumerate() {
            let i = i.to_string();
            let l = [namespace, name, i.as_str()];
            self.partition_backlog
                .with_label_values(&l)
                .set(p.backlog as i64);
            self.partition_pending
                .with_label_values(&l)
                .set(p.pending as i64);
        }
        let before = self
            .partitions_seen
            .lock()
            .map(|mut m| m.insert((namespace.into(), name.into()), st.partitions.len()))
            .ok()
            .flatten()
            .unwrap_or(0);
        self.remove_partitions(namespace, name, st.partitions.len()..before);
    }

    fn remove_partitions(&self, namespace: &str, name: &str, range: std::ops::Range<usize>) {
        for i in range {
            let i = i.to_string();
            let l = [namespace, name, i.as_str()];
            let _ = self.partition_backlog.remove_label_values(&l);
            let _ = self.partition_pending.remove_label_values(&l);
        }
    }

    /// Removes every series of a deleted pool, whatever its other labels.
    pub fn remove_pool(&self, namespace: &str, name: &str) {
        if let Ok(mut seen) = self.partitions_seen.lock() {
            seen.remove(&(namespace.to_string(), name.to_string()));
        }
        for f in self.families() {
            if f.label_names().starts_with(POOL) {
                f.remove_leading(&[namespace, name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_removal() {
        let m = Metrics::new().expect("metrics");
        m.desired.with_label_values(&["ns", "a"]).set(3);
        m.queue_up.with_label_values(&["ns", "a"]).set(1);
        m.scale_events.with_label_values(&["ns", "a", "up"]).inc();
        m.replacements
            .with_label_values(&["ns", "a", "failed"])
            .inc();
        m.reconcile_errors
            .with_label_values(&["ns", "a", "api"])
            .inc();
        m.probe_errors
            .with_label_values(&["ns", "a", "unreachable"])
            .inc();
        m.desired.with_label_values(&["ns", "b"]).set(1);
        m.probes.with_label_values(&["ns", "a", "wake"]).inc();
        m.scale_decisions
            .with_label_values(&["ns", "a", "up", "RatePolicy"])
            .inc();
        m.wakes.with_label_values(&["ns", "a"]).inc();
        m.deletion_cost_updates
            .with_label_values(&["ns", "a"])
            .inc();
        m.wake_watched_pools.set(2);
        m.wake_errors.with_label_values(&["unreachable"]).inc();
        m.draining.with_label_values(&["ns", "a"]).set(2);
        m.drains.with_label_values(&["ns", "a", "started"]).inc();
        m.signal_updates
            .with_label_values(&["ns", "a", "busy"])
            .inc();
        m.reconcile_duration.observe(0.01);
        m.leader.set(1);
        let parts = |n: u64| workpool_worker::queue::QueueStats {
            partitions: (0..n)
                .map(|i| workpool_worker::queue::QueueStats {
                    backlog: 10 + i,
                    pending: i,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        m.set_partitions("ns", "a", &parts(3));
        m.set_partitions("ns", "b", &parts(1));
        let text = m.render();
        for want in [
            "workpool_desired_replicas{namespace=\"ns\",workpool=\"a\"} 3",
            "workpool_queue_up{namespace=\"ns\",workpool=\"a\"} 1",
            "workpool_scale_events_total{direction=\"up\",namespace=\"ns\",workpool=\"a\"} 1",
            "workpool_pod_replacements_total{namespace=\"ns\",reason=\"failed\",workpool=\"a\"} 1",
            "workpool_reconcile_errors_total{namespace=\"ns\",reason=\"api\",workpool=\"a\"} 1",
            "workpool_queue_probe_errors_total{namespace=\"ns\",reason=\"unreachable\",workpool=\"a\"} 1",
            "workpool_reconcile_duration_seconds_count 1",
            "workpool_leader 1",
            "workpool_queue_probes_total{namespace=\"ns\",trigger=\"wake\",workpool=\"a\"} 1",
            "workpool_scale_decisions_total{direction=\"up\",namespace=\"ns\",reason=\"RatePolicy\",workpool=\"a\"} 1",
            "workpool_wakes_total{namespace=\"ns\",workpool=\"a\"} 1",
            "workpool_pod_deletion_cost_updates_total{namespace=\"ns\",workpool=\"a\"} 1",
            "workpool_wake_watched_pools 2",
            "workpool_wake_errors_total{reason=\"unreachable\"} 1",
            "workpool_queue_partition_backlog{namespace=\"ns\",partition=\"2\",workpool=\"a\"} 12",
            "workpool_queue_partition_pending{namespace=\"ns\",partition=\"1\",workpool=\"a\"} 1",
            "workpool_queue_partition_backlog{namespace=\"ns\",partition=\"0\",workpool=\"b\"} 10",
            "workpool_draining_replicas{namespace=\"ns\",workpool=\"a\"} 2",
            "workpool_drains_total{namespace=\"ns\",outcome=\"started\",workpool=\"a\"} 1",
            "workpool_pod_signal_updates_total{namespace=\"ns\",state=\"busy\",workpool=\"a\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // Fewer partitions reported: the others' series go.
        m.set_partitions("ns", "a", &parts(2));
        assert!(!m.render().contains("partition=\"2\",workpool=\"a\""));
        m.remove_pool("ns", "a");
        let text = m.render();
        assert!(!text.contains("workpool=\"a\""), "{text}");
        assert!(text.contains("partition=\"0\",workpool=\"b\""));
        assert!(text.contains("workpool_desired_replicas{namespace=\"ns\",workpool=\"b\"} 1"));
    }
}
