//! The model of a pool: a Redis stream with a consumer group, pods that take time to
//! start, workers with a fixed number of task slots, deletion with a grace period.
//! Time advances in ticks of [`TICK_MS`]; everything is integer milliseconds, so a run
//! is exactly reproducible.

use std::collections::VecDeque;

use super::contenders::{Contender, PodSnapshot, QueueView};
use super::rng::SimRng;
use super::trace::Trace;
use super::{Outcome, PoolSettings, Sample};

/// Simulation step.
pub const TICK_MS: u64 = 100;
/// Spacing of the timeline samples kept for plots.
pub const SAMPLE_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug)]
struct Running {
    task: usize,
    done_ms: u64,
    started_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    running: Option<Running>,
    free_since_ms: u64,
}

#[derive(Clone, Debug)]
struct Pod {
    id: u64,
    created_ms: u64,
    ready_ms: u64,
    deleted_ms: Option<u64>,
    slots: Vec<Slot>,
}

impl Pod {
    fn in_flight(&self) -> u32 {
        self.slots
            .iter()
            .filter(|slot| slot.running.is_some())
            .count() as u32
    }
}

/// Runs `trace` through a pool scaled by `contender`; `seed` fixes pod start times.
pub fn run(
    trace: &Trace,
    pool: &PoolSettings,
    contender: &mut dyn Contender,
    seed: u64,
    drain_ms: u64,
) -> Outcome {
    let mut rng = SimRng::new(seed);
    let horizon_ms = trace.duration_ms + drain_ms;
    let mut next_arrival = 0usize;
    let mut queue: VecDeque<usize> = VecDeque::new();
    // Tasks held by a dead worker: (when they can be reclaimed, task).
    let mut abandoned: Vec<(u64, usize)> = Vec::new();
    let mut completed_run_start: Vec<Option<u64>> = vec![None; trace.tasks.len()];
    let mut pods: Vec<Pod> = Vec::new();
    let mut next_pod_id = 0u64;
    let mut worker_ms: u128 = 0;
    let mut busy_victims = 0u64;
    let mut tasks_cut = 0u64;
    let mut peak_pods = 0u32;
    let mut timeline = Vec::new();
    let concurrency = pool.concurrency.max(1) as usize;

    let mut now = 0u64;
    while now <= horizon_ms {
        // Producers.
        while let Some(task) = trace.tasks.get(next_arrival) {
            if task.arrival_ms > now {
                break;
            }
            queue.push_back(next_arrival);
            next_arrival += 1;
        }
        // Dead workers' tasks become claimable (ahead of newer entries).
        abandoned.sort_by_key(|&(at, task)| (at, task));
        while abandoned.first().is_some_and(|&(at, _)| at <= now) {
            let (_, task) = abandoned.remove(0);
            queue.push_front(task);
        }
        // Completions.
        for pod in &mut pods {
            for slot in &mut pod.slots {
                if let Some(running) = slot.running
                    && running.done_ms <= now
                {
                    completed_run_start[running.task] = Some(running.started_ms);
                    slot.running = None;
                    slot.free_since_ms = running.done_ms;
                }
            }
        }
        // Pods being deleted leave once idle, or are killed at the end of the grace period.
        pods.retain_mut(|pod| {
            let Some(deleted) = pod.deleted_ms else {
                return true;
            };
            let idle = pod.in_flight() == 0;
            // A draining pod is never cut short (no drain limit, the operator's default).
            let grace_over = !contender.drains() && now >= deleted + pool.grace_period_ms;
            if !idle && !grace_over {
                return true;
            }
            for slot in &mut pod.slots {
                if let Some(running) = slot.running.take() {
                    tasks_cut += 1;
                    if contender.hands_back_on_shutdown() {
                        queue.push_front(running.task);
                    } else {
                        abandoned.push((now + pool.visibility_timeout_ms, running.task));
                    }
                }
            }
            worker_ms += u128::from(now - pod.created_ms);
            false
        });

        // The scaler.
        let live: Vec<&Pod> = pods.iter().filter(|pod| pod.deleted_ms.is_none()).collect();
        let live_pods = live.len() as u32;
        let terminating = pods.len() as u32 - live_pods;
        let ready_pods = live.iter().filter(|pod| pod.ready_ms <= now).count() as u32;
        let in_flight: u64 = pods.iter().map(|pod| u64::from(pod.in_flight())).sum();
        let view = QueueView {
            now_ms: now,
            lag: queue.len() as u64,
            pending: in_flight + abandoned.len() as u64,
            readable: trace.readable_at(now),
            live_pods,
            ready_pods,
        };
        let target = contender.tick(&view);

        // The pods' owner (our planner, or a ReplicaSet) reconciles toward the target.
        if target > live_pods {
            let mut wanted = target - live_pods;
            let mut live_pods = live_pods;
            let mut terminating = terminating;
            if contender.drains() {
                // Take draining pods back first, busiest first.
                let mut draining: Vec<&mut Pod> = pods
                    .iter_mut()
                    .filter(|pod| pod.deleted_ms.is_some())
                    .collect();
                draining.sort_by_key(|pod| (std::cmp::Reverse(pod.in_flight()), pod.created_ms));
                for pod in draining.into_iter().take(wanted as usize) {
                    pod.deleted_ms = None;
                    wanted -= 1;
                    live_pods += 1;
                    terminating -= 1;
                }
            }
            let create = if contender.terminating_pods_count_against_max() {
                crate::autoscale::pods_to_create(target, live_pods, terminating, pool.max_replicas)
            } else {
                wanted
            };
            for _ in 0..create {
                let start_ms =
                    rng.uniform(pool.start_min_ms as f64, pool.start_max_ms as f64) as u64;
                pods.push(Pod {
                    id: next_pod_id,
                    created_ms: now,
                    ready_ms: now + start_ms,
                    deleted_ms: None,
                    slots: vec![
                        Slot {
                            running: None,
                            free_since_ms: now + start_ms,
                        };
                        concurrency
                    ],
                });
                next_pod_id += 1;
            }
        } else if target < live_pods {
            let snapshots: Vec<PodSnapshot> = pods
                .iter()
                .filter(|pod| pod.deleted_ms.is_none())
                .map(|pod| PodSnapshot {
                    id: pod.id,
                    created_ms: pod.created_ms,
                    ready_ms: pod.ready_ms,
                    in_flight: pod.in_flight(),
                })
                .collect();
            let count = (live_pods - target) as usize;
            let victims = contender.choose_victims(&snapshots, now, count);
            for pod in pods
                .iter_mut()
                .filter(|pod| victims.contains(&pod.id))
                .take(count)
            {
                if pod.deleted_ms.is_none() {
                    if pod.in_flight() > 0 {
                        busy_victims += 1;
                    }
                    pod.deleted_ms = Some(now);
                }
            }
        }
        peak_pods = peak_pods.max(pods.len() as u32);

        // Workers blocked on XREADGROUP get entries, longest-waiting slot first.
        if !queue.is_empty() {
            let mut free: Vec<(u64, u64, usize, usize)> = Vec::new();
            for (pod_index, pod) in pods.iter().enumerate() {
                if pod.deleted_ms.is_some() || pod.ready_ms > now {
                    continue;
                }
                for (slot_index, slot) in pod.slots.iter().enumerate() {
                    if slot.running.is_none() {
                        free.push((slot.free_since_ms, pod.id, pod_index, slot_index));
                    }
                }
            }
            free.sort_unstable();
            for (_, _, pod_index, slot_index) in free {
                let Some(task) = queue.pop_front() else {
                    break;
                };
                let service_ms = trace.tasks[task].service_ms;
                pods[pod_index].slots[slot_index].running = Some(Running {
                    task,
                    done_ms: now + service_ms,
                    started_ms: now,
                });
            }
        }

        if now.is_multiple_of(SAMPLE_MS) {
            let in_flight: u64 = pods.iter().map(|pod| u64::from(pod.in_flight())).sum();
            timeline.push(Sample {
                at_seconds: now as f64 / 1000.0,
                pods: pods.len() as u32,
                live_pods: pods.iter().filter(|pod| pod.deleted_ms.is_none()).count() as u32,
                backlog: queue.len() as u64 + in_flight + abandoned.len() as u64,
            });
        }
        now += TICK_MS;
    }
    for pod in &pods {
        worker_ms += u128::from(horizon_ms.saturating_sub(pod.created_ms));
    }

    let mut waits: Vec<f64> = trace
        .tasks
        .iter()
        .zip(&completed_run_start)
        .map(|(task, start)| {
            let started = start.unwrap_or(horizon_ms);
            started.saturating_sub(task.arrival_ms) as f64 / 1000.0
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let completed = completed_run_start
        .iter()
        .filter(|start| start.is_some())
        .count();
    Outcome {
        tasks: trace.tasks.len(),
        completed,
        p50_wait_seconds: percentile(&waits, 0.50),
        p95_wait_seconds: percentile(&waits, 0.95),
        max_wait_seconds: waits.last().copied().unwrap_or(0.0),
        worker_seconds: (worker_ms / 1000) as f64,
        busy_victims,
        tasks_cut,
        scale_events: contender.scale_events(),
        peak_pods,
        timeline,
    }
}

/// The `quantile` (0..=1) of sorted `values` by the nearest-rank method; 0 when empty.
pub fn percentile(sorted_values: &[f64], quantile: f64) -> f64 {
    if sorted_values.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted_values.len() as f64).ceil() as usize;
    sorted_values[rank.clamp(1, sorted_values.len()) - 1]
}
