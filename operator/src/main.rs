//! `workpool-operator`: runs the WorkPool controller (see `workpool-operator --help`).
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = workpool_operator::run::Args::parse();
    if let Err(e) = workpool_operator::run::run(args).await {
        eprintln!("workpool-operator: {e:#}");
        std::process::exit(1);
    }
}
