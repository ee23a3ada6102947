//! A deterministic simulator that replays task arrival traces through a model of a
//! worker pool and compares workpool's scaling with KEDA + HPA.
//!
//! The model ([`cluster`]): producers add tasks to a stream; pods take 2-5 s to start;
//! each worker has a fixed number of task slots and takes the oldest undelivered entry
//! whenever a slot is free (longest-waiting slot first, as Redis serves blocked
//! `XREADGROUP` clients); a deleted pod stops reading, finishes what it holds within
//! its grace period and is then killed. The contenders ([`contenders`]):
//!
//! - **workpool**: this crate's [`autoscale`](crate::autoscale) policy on backlog =
//!   lag + pending, polled every 5 s and woken 0.5 s after the first task while at
//!   zero; idle-first victims; pods still terminating count against `maxReplicas`; a
//!   worker cut off at the end of its grace period hands its task back at once.
//! - **KEDA + HPA**, on lag only or on pending only: KEDA polls every 30 s (activation,
//!   cooldown of 300 s to zero, fallback after 3 failed polls; a third variant on lag
//!   has its cooldown set to workpool's zero delay, so that the two defaults' difference
//!   does not decide the comparison), the HPA syncs every
//!   15 s with its default behavior, a Deployment's ReplicaSet picks victims by
//!   readiness and age (not by load), and the task of a worker killed at the end of its
//!   grace period returns only after the visibility timeout.
//!
//! Every figure is a pure function of the seed: the same seed gives the same table.

pub mod cluster;
pub mod contenders;
pub mod plot;
pub mod rng;
pub mod trace;

use contenders::{ContenderKind, contender};
use rng::SimRng;
use trace::{ServiceTime, Trace, burst, poisson_arrivals, sorted};

/// A pool's settings, the same for every contender.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// Tasks one worker runs at once.
    pub concurrency: u32,
    /// Waiting + in-flight tasks per replica the scalers aim for.
    pub target_backlog_per_replica: u64,
    /// Lower bound.
    pub min_replicas: u32,
    /// Upper bound.
    pub max_replicas: u32,
    /// workpool's `scaleToZeroDelaySeconds`.
    pub scale_to_zero_delay_seconds: u32,
    /// Replicas while the queue cannot be read (both scalers), if set.
    pub fallback_replicas: Option<u32>,
    /// `terminationGracePeriodSeconds`, in ms.
    pub grace_period_ms: u64,
    /// A dead worker's task is reclaimed after this (ms).
    pub visibility_timeout_ms: u64,
    /// Fastest pod start (ms).
    pub start_min_ms: u64,
    /// Slowest pod start (ms).
    pub start_max_ms: u64,
}

impl Default for PoolSettings {
    /// Four slots per worker, a target of 4, 0..=50 replicas, 120 s to zero, no
    /// fallback, 30 s grace and visibility timeout, pods that start in 2-5 s.
    fn default() -> Self {
        Self {
            concurrency: 4,
            target_backlog_per_replica: 4,
            min_replicas: 0,
            max_replicas: 50,
            scale_to_zero_delay_seconds: 120,
            fallback_replicas: None,
            grace_period_ms: 30_000,
            visibility_timeout_ms: 30_000,
            start_min_ms: 2_000,
            start_max_ms: 5_000,
        }
    }
}

/// A trace and the pool it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The workload.
    pub trace: Trace,
    /// The pool.
    pub pool: PoolSettings,
}

/// The pool at one instant, for plots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub at_seconds: f64,
    /// Pods that exist (starting, running or terminating).
    pub pods: u32,
    /// Pods not being deleted.
    pub live_pods: u32,
    /// Lag + pending.
    pub backlog: u64,
}

/// What one contender achieved on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Tasks in the trace.
    pub tasks: usize,
    /// Tasks finished by the end of the run.
    pub completed: usize,
    /// Median queue wait (seconds).
    pub p50_wait_seconds: f64,
    /// 95th percentile queue wait: from arrival to the start of the run that finished
    /// the task, so time lost to a killed run counts; an unfinished task counts until
    /// the end of the run.
    pub p95_wait_seconds: f64,
    /// Longest queue wait (seconds).
    pub max_wait_seconds: f64,
    /// Seconds of pod life (starting, running and terminating), summed over pods.
    pub worker_seconds: f64,
    /// Pods chosen for deletion while they held a task.
    pub busy_victims: u64,
    /// Tasks cut off when a worker's grace period ended before they finished.
    pub tasks_cut: u64,
    /// Changes of the replica target.
    pub scale_events: u64,
    /// Most pods at once, terminating ones included.
    pub peak_pods: u32,
    /// One sample a second.
    pub timeline: Vec<Sample>,
}

/// Every contender's outcome on one scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The scenario.
    pub scenario: Scenario,
    /// Outcomes in [`ContenderKind::ALL`] order.
    pub outcomes: Vec<(ContenderKind, Outcome)>,
}

impl Comparison {
    /// The outcome of `kind`, if it ran.
    pub fn outcome(&self, kind: ContenderKind) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(contender, _)| *contender == kind)
            .map(|(_, outcome)| outcome)
    }
}

/// Time after the arrivals end for the pool to drain and scale in.
pub const DRAIN_MS: u64 = 900_000;

/// Runs one contender on one scenario.
pub fn run(scenario: &Scenario, kind: ContenderKind, seed: u64) -> Outcome {
    // Polling phases and pod start times come from the seed, the same for every contender.
    let mut phases = SimRng::new(seed ^ 0x5EED);
    let phase_ms = (phases.unit() * 60_000.0) as u64;
    let mut scaler = contender(kind, &scenario.pool, phase_ms);
    cluster::run(
        &scenario.trace,
        &scenario.pool,
        scaler.as_mut(),
        seed,
        DRAIN_MS,
    )
}

/// Runs every contender on `scenario`.
pub fn compare(scenario: &Scenario, seed: u64) -> Comparison {
    Comparison {
        scenario: scenario.clone(),
        outcomes: ContenderKind::ALL
            .iter()
            .map(|&kind| (kind, run(scenario, kind, seed)))
            .collect(),
    }
}

const MINUTE_MS: u64 = 60_000;

fn short_tasks() -> ServiceTime {
    ServiceTime::LogNormal {
        median_seconds: 1.5,
        sigma: 0.6,
    }
}

/// The standard traces: steady, burst, diurnal, spiky, long tasks, metric outage.
pub fn standard_scenarios(seed: u64) -> Vec<Scenario> {
    let mut rng = SimRng::new(seed);
    let mut scenarios = Vec::new();

    let duration_ms = 40 * MINUTE_MS;
    scenarios.push(Scenario {
        trace: Trace {
            name: "steady".into(),
            description: "Poisson arrivals at 8 tasks/s for 40 min, tasks ~1.5 s (log-normal)"
                .into(),
            duration_ms,
            tasks: poisson_arrivals(&mut rng, duration_ms, 8.0, |_| 8.0, short_tasks()),
            outages: Vec::new(),
        },
        pool: PoolSettings::default(),
    });

    let duration_ms = 20 * MINUTE_MS;
    scenarios.push(Scenario {
        trace: Trace {
            name: "burst".into(),
            description: "an idle pool gets 3000 tasks within 20 s, then nothing".into(),
            duration_ms,
            tasks: burst(&mut rng, 90_000, 20_000, 3_000, short_tasks()),
            outages: Vec::new(),
        },
        pool: PoolSettings::default(),
    });

    let duration_ms = 120 * MINUTE_MS;
    let day_seconds = 60.0 * 60.0;
    scenarios.push(Scenario {
        trace: Trace {
            name: "diurnal".into(),
            description: "two compressed days of 1 h: rate follows a sine up to 12 tasks/s, \
                          nothing at night"
                .into(),
            duration_ms,
            tasks: poisson_arrivals(
                &mut rng,
                duration_ms,
                12.0,
                |seconds| {
                    12.0 * (std::f64::consts::TAU * seconds / day_seconds)
                        .sin()
                        .max(0.0)
                },
                short_tasks(),
            ),
            outages: Vec::new(),
        },
        pool: PoolSettings::default(),
    });

    let duration_ms = 90 * MINUTE_MS;
    let mut spikes = Vec::new();
    let mut at_ms = 2 * MINUTE_MS;
    while at_ms < duration_ms {
        let count = 100 + (rng.unit() * 400.0) as u64;
        spikes.extend(burst(&mut rng, at_ms, 5_000, count, short_tasks()));
        at_ms += (rng.uniform(3.0, 12.0) * MINUTE_MS as f64) as u64;
    }
    scenarios.push(Scenario {
        trace: Trace {
            name: "spiky".into(),
            description: "spikes of 100-500 tasks within 5 s, 3-12 min apart, nothing between"
                .into(),
            duration_ms,
            tasks: sorted(spikes),
            outages: Vec::new(),
        },
        pool: PoolSettings::default(),
    });

    let duration_ms = 90 * MINUTE_MS;
    scenarios.push(Scenario {
        trace: Trace {
            name: "long-tasks".into(),
            description: "tasks of 1-4 min, one per worker; 0.15 tasks/s and 0.03 tasks/s in \
                          alternating 15 min phases"
                .into(),
            duration_ms,
            tasks: poisson_arrivals(
                &mut rng,
                duration_ms,
                0.15,
                |seconds| {
                    if ((seconds / 900.0) as u64).is_multiple_of(2) {
                        0.15
                    } else {
                        0.03
                    }
                },
                ServiceTime::Uniform {
                    low_seconds: 60.0,
                    high_seconds: 240.0,
                },
            ),
            outages: Vec::new(),
        },
        pool: PoolSettings {
            concurrency: 1,
            target_backlog_per_replica: 1,
            ..PoolSettings::default()
        },
    });

    let duration_ms = 40 * MINUTE_MS;
    scenarios.push(Scenario {
        trace: Trace {
            name: "metric-outage".into(),
            description: "4 tasks/s, rising to 10 tasks/s at 15 min while the queue's metrics \
                          cannot be read from 14 to 22 min; fallbackReplicas 8 for both"
                .into(),
            duration_ms,
            tasks: poisson_arrivals(
                &mut rng,
                duration_ms,
                10.0,
                |seconds| if seconds < 900.0 { 4.0 } else { 10.0 },
                short_tasks(),
            ),
            outages: vec![(14 * MINUTE_MS, 22 * MINUTE_MS)],
        },
        pool: PoolSettings {
            fallback_replicas: Some(8),
            ..PoolSettings::default()
        },
    });
    scenarios
}

/// The results as a markdown table: one row per trace and contender, with workpool's
/// worker-seconds relative to each KEDA variant.
pub fn markdown_table(comparisons: &[Comparison]) -> String {
    let mut table = String::from(
        "| trace | scaler | p95 wait (s) | p50 wait (s) | worker-seconds | workpool vs this | \
         busy pods chosen | tasks killed | scale events | peak pods | done |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for comparison in comparisons {
        let ours = comparison
            .outcome(ContenderKind::Workpool)
            .map(|outcome| outcome.worker_seconds);
        for (kind, outcome) in &comparison.outcomes {
            let relative = match ours {
                Some(ours) if *kind != ContenderKind::Workpool && outcome.worker_seconds > 0.0 => {
                    format!("{:+.0}%", (ours / outcome.worker_seconds - 1.0) * 100.0)
                }
                _ => "".into(),
            };
            table.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {}/{} |\n",
                comparison.scenario.trace.name,
                kind.label(),
                outcome.p95_wait_seconds,
                outcome.p50_wait_seconds,
                outcome.worker_seconds,
                relative,
                outcome.busy_victims,
                outcome.tasks_cut,
                outcome.scale_events,
                outcome.peak_pods,
                outcome.completed,
                outcome.tasks,
            ));
        }
    }
    table
}

/// Median, lowest and highest of `values` (all 0 when empty).
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = cluster::percentile(values, 0.5);
    let low = values.first().copied().unwrap_or(0.0);
    let high = values.last().copied().unwrap_or(0.0);
    (median, low, high)
}

/// The results over several seeds as a markdown table: per trace and contender, the
/// median and range of p95 wait and of workpool's worker-seconds relative to it, and the
/// tasks killed over all seeds. `runs` holds one [`compare`] result list per seed, each
/// in the same trace order.
pub fn summary_table(runs: &[Vec<Comparison>]) -> String {
    let mut table = format!(
        "| trace | scaler | p95 wait (s), median [range] over {} seeds | worker-seconds, median | \
         workpool vs this, median [range] | tasks killed, all seeds |\n\
         |---|---|---:|---:|---:|---:|\n",
        runs.len()
    );
    let Some(first) = runs.first() else {
        return table;
    };
    for (trace_index, comparison) in first.iter().enumerate() {
        for (kind, _) in &comparison.outcomes {
            let outcomes: Vec<(&Outcome, Option<&Outcome>)> = runs
                .iter()
                .filter_map(|run| run.get(trace_index))
                .filter_map(|comparison| {
                    comparison
                        .outcome(*kind)
                        .map(|outcome| (outcome, comparison.outcome(ContenderKind::Workpool)))
                })
                .collect();
            let (p95, p95_low, p95_high) = spread(
                &mut outcomes
                    .iter()
                    .map(|(outcome, _)| outcome.p95_wait_seconds)
                    .collect::<Vec<_>>(),
            );
            let (worker_seconds, _, _) = spread(
                &mut outcomes
                    .iter()
                    .map(|(outcome, _)| outcome.worker_seconds)
                    .collect::<Vec<_>>(),
            );
            let relative = if *kind == ContenderKind::Workpool {
                String::new()
            } else {
                let (median, low, high) = spread(
                    &mut outcomes
                        .iter()
                        .filter(|(outcome, _)| outcome.worker_seconds > 0.0)
                        .filter_map(|(outcome, ours)| {
                            ours.map(|ours| {
                                (ours.worker_seconds / outcome.worker_seconds - 1.0) * 100.0
                            })
                        })
                        .collect::<Vec<_>>(),
                );
                format!("{median:+.0}% [{low:+.0}%, {high:+.0}%]")
            };
            let killed: u64 = outcomes.iter().map(|(outcome, _)| outcome.tasks_cut).sum();
            table.push_str(&format!(
                "| {} | {} | {p95:.1} [{p95_low:.1}, {p95_high:.1}] | {worker_seconds:.0} | {relative} | {killed} |\n",
                comparison.scenario.trace.name,
                kind.label(),
            ));
        }
    }
    table
}

#[cfg(test)]
mod tests;
