//! `workpool-operator`: runs the WorkPool controller (see `workpool-operator --help`).
#![forbid(unsafe_code)]

use clap::Parser;

// jemalloc: with glibc's allocator the operator's resident memory was about twice its
// live heap at 2,000 pools (per-thread arenas, fragments left by each queue-poll tick);
// jemalloc measured 6% less resident and 20% less CPU while converging (BENCHMARKS.md,
// "Scale").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let args = workpool_operator::run::Args::parse();
    if let Err(e) = workpool_operator::run::run(args).await {
        eprintln!("workpool-operator: {e:#}");
        std::process::exit(1);
    }
}
