//! Task arrival traces: when each task arrives and how long it runs, and when the
//! queue's metrics cannot be read.

use super::rng::SimRng;

/// One task of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Task {
    /// Milliseconds from the start of the trace until the producer adds it.
    pub arrival_ms: u64,
    /// Milliseconds a worker needs to run it.
    pub service_ms: u64,
}

/// A workload: tasks, and the windows in which the queue cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Short name, used in the table and the plot's file name.
    pub name: String,
    /// One sentence saying what the trace exercises.
    pub description: String,
    /// Length of the arrival period; the simulation runs on after it to drain.
    pub duration_ms: u64,
    /// The tasks, ordered by arrival.
    pub tasks: Vec<Task>,
    /// `[start, end)` windows (ms) in which reading the queue's metrics fails.
    pub outages: Vec<(u64, u64)>,
}

impl Trace {
    /// Whether the queue's metrics can be read at `now_ms`.
    pub fn readable_at(&self, now_ms: u64) -> bool {
        !self
            .outages
            .iter()
            .any(|&(start, end)| (start..end).contains(&now_ms))
    }
}

/// How long tasks run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceTime {
    /// Log-normal with this median (seconds) and shape.
    LogNormal {
        /// Median seconds.
        median_seconds: f64,
        /// Sigma of the underlying normal.
        sigma: f64,
    },
    /// Uniform between two bounds (seconds).
    Uniform {
        /// Shortest.
        low_seconds: f64,
        /// Longest.
        high_seconds: f64,
    },
}

impl ServiceTime {
    fn sample_ms(&self, rng: &mut SimRng) -> u64 {
        let seconds = match *self {
            Self::LogNormal {
                median_seconds,
                sigma,
            } => rng.log_normal(median_seconds, sigma),
            Self::Uniform {
                low_seconds,
                high_seconds,
            } => rng.uniform(low_seconds, high_seconds),
        };
        // At least a millisecond; no task runs forever.
        (seconds * 1000.0).clamp(1.0, 86_400_000.0) as u64
    }
}

/// Poisson arrivals whose rate (tasks per second) follows `rate_at(seconds)`, which
/// must never exceed `max_rate` (thinning).
pub fn poisson_arrivals(
    rng: &mut SimRng,
    duration_ms: u64,
    max_rate: f64,
    rate_at: impl Fn(f64) -> f64,
    service: ServiceTime,
) -> Vec<Task> {
    let mut tasks = Vec::new();
    if max_rate <= 0.0 || !max_rate.is_finite() {
        return tasks;
    }
    let end = duration_ms as f64 / 1000.0;
    let mut now = 0.0;
    loop {
        now += rng.exponential(1.0 / max_rate);
        if now >= end {
            break;
        }
        let keep = rng.unit() * max_rate < rate_at(now).clamp(0.0, max_rate);
        let service_ms = service.sample_ms(rng);
        if keep {
            tasks.push(Task {
                arrival_ms: (now * 1000.0) as u64,
                service_ms,
            });
        }
    }
    tasks
}

/// `count` tasks arriving evenly over `[start_ms, start_ms + spread_ms)`.
pub fn burst(
    rng: &mut SimRng,
    start_ms: u64,
    spread_ms: u64,
    count: u64,
    service: ServiceTime,
) -> Vec<Task> {
    (0..count)
        .map(|index| Task {
            arrival_ms: start_ms + spread_ms.saturating_mul(index) / count.max(1),
            service_ms: service.sample_ms(rng),
        })
        .collect()
}

/// Sorts tasks by arrival (for traces assembled from parts).
pub fn sorted(mut tasks: Vec<Task>) -> Vec<Task> {
    tasks.sort_by_key(|task| task.arrival_ms);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_rate_is_respected() {
        let mut rng = SimRng::new(3);
        let service = ServiceTime::Uniform {
            low_seconds: 1.0,
            high_seconds: 2.0,
        };
        let tasks = poisson_arrivals(&mut rng, 1_000_000, 10.0, |_| 5.0, service);
        // 1000 s at 5/s: 5000 expected, a few standard deviations (~71) of slack.
        assert!((4_700..5_300).contains(&tasks.len()), "{}", tasks.len());
        assert!(
            tasks
                .windows(2)
                .all(|pair| pair[0].arrival_ms <= pair[1].arrival_ms)
        );
        assert!(
            tasks
                .iter()
                .all(|task| (1_000..2_000).contains(&task.service_ms))
        );
    }

    #[test]
    fn bursts_spread_evenly_and_outages_are_half_open() {
        let mut rng = SimRng::new(3);
        let service = ServiceTime::LogNormal {
            median_seconds: 1.0,
            sigma: 0.1,
        };
        let tasks = burst(&mut rng, 1_000, 1_000, 4, service);
        let arrivals: Vec<u64> = tasks.iter().map(|task| task.arrival_ms).collect();
        assert_eq!(arrivals, vec![1_000, 1_250, 1_500, 1_750]);
        let trace = Trace {
            name: "t".into(),
            description: String::new(),
            duration_ms: 10,
            tasks,
            outages: vec![(5, 8)],
        };
        assert!(trace.readable_at(4));
        assert!(!trace.readable_at(5));
        assert!(trace.readable_at(8));
    }
}
