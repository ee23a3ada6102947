//! `workpool-testcluster`: runs the in-memory Kubernetes API server double for people
//! (kubectl, the operator) until SIGINT/SIGTERM. It is a TEST STAND-IN, not Kubernetes.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use workpool_tests::cluster::{ClusterOptions, TestCluster, repo_root};

#[derive(Parser, Debug)]
#[command(
    name = "workpool-testcluster",
    about = "Runs the workpool test control plane: an in-memory stand-in for the Kubernetes API server (not a real cluster)"
)]
struct Args {
    /// Loopback port to listen on (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write a kubeconfig for this server (default: a temporary file).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directories of YAML manifests (CRDs) to apply at start; default `<repo>/crds`.
    #[arg(long = "crds")]
    crds: Vec<PathBuf>,
    /// Events kept for watch resumption (older versions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let mut opts = ClusterOptions {
        port: args.port,
        ..ClusterOptions::default()
    };
    opts.server.history_limit = args.history;
    if !args.crds.is_empty() {
        opts.manifest_dirs = args.crds.clone();
    } else {
        opts.manifest_dirs = vec![repo_root().join("crds")];
    }
    let cluster = TestCluster::start_with(opts).await?;
    let kubeconfig = match &args.kubeconfig {
        Some(p) => {
            workpool_tests::cluster::write_kubeconfig(p, &cluster.server_url())?;
            p.clone()
        }
        None => cluster.kubeconfig_path().to_path_buf(),
    };
    println!(
        "workpool-testcluster: a TEST STAND-IN for the Kubernetes API server (in memory, no kubelet, no auth)."
    );
    println!("  It is not Kubernetes: no containers run unless a process kubelet is attached.");
    println!("  API:        {}", cluster.server_url());
    println!("  kubeconfig: {}", kubeconfig.display());
    println!("Try:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    println!("  kubectl api-resources");
    println!(
        "Faults (for people): curl -XPOST {}/_test/faults -d '{{\"rules\":[{{\"verbs\":[\"create\"],\"resources\":[\"pods\"],\"status\":500,\"rate\":0.5}}]}}'",
        cluster.server_url()
    );
    println!("Stop with Ctrl-C (SIGINT) or SIGTERM.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    println!("workpool-testcluster: stopping");
    drop(cluster);
    Ok(())
}
