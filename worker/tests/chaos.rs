//! The chaos suite, bounded: a few hundred tasks through four real workers against a real
//! redis-server while workers and handlers are SIGKILLed, Redis is frozen and restarted,
//! the group is destroyed and dead-letter writes are refused, at random from a fixed seed.
//! `workpool-chaos` runs the same suite longer and prints the figures.

use workpool_worker::chaos::{self, ChaosConfig, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_runs_nothing_twice_while_its_worker_lives() {
    let seed = std::env::var("WORKPOOL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let cfg = ChaosConfig::small(env!("CARGO_BIN_EXE_workpool-worker").into(), seed);
    let report = chaos::run(cfg).await.expect("the chaos run completes");
    eprint!("{}", report.render());
    assert!(report.violations.is_empty(), "{}", report.render());
    assert_eq!(report.completed + report.dead_lettered, report.tasks);
    // The faults did happen.
    assert!(
        report.worker_kills + report.handler_kills > 0,
        "{}",
        report.render()
    );
    assert!(
        report.redis_pauses + report.redis_restarts + report.group_destroys > 0,
        "{}",
        report.render()
    );
}

/// The same suite on a Sentinel set: the Redis faults are failovers (SIGKILL of the
/// primary); tasks are submitted durably, so a failover loses none, and its extra runs
/// are bounded by the tasks held at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_sentinel_failovers_loses_nothing() {
    let seed = std::env::var("WORKPOOL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let mut cfg = ChaosConfig::small(env!("CARGO_BIN_EXE_workpool-worker").into(), seed);
    cfg.topology = Topology::Sentinel;
    let report = chaos::run(cfg).await.expect("the chaos run completes");
    eprint!("{}", report.render());
    assert!(report.violations.is_empty(), "{}", report.render());
    assert_eq!(report.completed + report.dead_lettered, report.tasks);
    assert!(report.failovers > 0, "{}", report.render());
}

/// The same suite on a Redis Cluster with four partitions: the Redis faults are slot
/// migrations of a partition to another primary, which must lose and repeat nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_cluster_slot_migrations_loses_nothing() {
    let seed = std::env::var("WORKPOOL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let mut cfg = ChaosConfig::small(env!("CARGO_BIN_EXE_workpool-worker").into(), seed);
    cfg.topology = Topology::Cluster { partitions: 4 };
    let report = chaos::run(cfg).await.expect("the chaos run completes");
    eprint!("{}", report.render());
    assert!(report.violations.is_empty(), "{}", report.render());
    assert_eq!(report.completed + report.dead_lettered, report.tasks);
    assert!(report.slot_migrations > 0, "{}", report.render());
    assert_eq!(report.duplicates_from_failovers, 0);
}
