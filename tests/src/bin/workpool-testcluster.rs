//! `workpool-testcluster`: runs the in-memory Kubernetes API server double for people
//! (kubectl, the operator) until SIGINT/SIGTERM. It is a TEST STAND-IN, not Kubernetes.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use workpool_tests::cluster::{ClusterOptions, TestCluster, repo_root};
use workpool_tests::kubelet::{ImageMap, Kubelet, KubeletConfig};

/// The worker image our chart and examples use; mapped to the locally built binary.
const WORKER_IMAGE: &str = "ghcr.io/workpool-dev/workpool-worker";

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
    /// Do not run the process kubelet (pods then stay Pending, as with no nodes).
    #[arg(long)]
    no_kubelet: bool,
    /// Node name of the process kubelet.
    #[arg(long, default_value = "node-1")]
    node: String,
    /// Map a container image (tag ignored) to a local binary: IMAGE=PATH. Repeatable.
    /// The workpool worker image maps to target/debug/workpool-worker by default.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((image, path)) if !image.is_empty() && !path.is_empty() => {
            Ok((image.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected IMAGE=PATH, got {s:?}")),
    }
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
    // Always the double, even when WORKPOOL_E2E_KUBECONFIG names a real cluster.
    let mut cluster = TestCluster::start_double(opts).await?;
    let mut image_lines = Vec::new();
    if !args.no_kubelet {
        let mut images = ImageMap::new();
        let mut mapped: Vec<(String, PathBuf)> = vec![(
            WORKER_IMAGE.to_string(),
            repo_root().join("target/debug/workpool-worker"),
        )];
        mapped.extend(args.images.iter().cloned());
        for (image, path) in &mapped {
            images = images.with(image, path);
            image_lines.push(format!("  image {image} -> {}", path.display()));
        }
        let work_dir = cluster.temp_dir().join("kubelet");
        let config =
            KubeletConfig::new(args.node.clone(), images, work_dir.clone()).with_scheduler(true);
        let kubelet = Kubelet::start(cluster.client(), config)
            .await
            .context("starting the process kubelet")?;
        image_lines.push(format!("  container logs under {}", work_dir.display()));
        cluster.attach(kubelet);
    }
    let kubeconfig = match &args.kubeconfig {
        Some(p) => {
            workpool_tests::cluster::write_kubeconfig(p, &cluster.server_url())?;
            // Absolute, so the printed `export KUBECONFIG=...` works from any directory.
            std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())
        }
        None => cluster.kubeconfig_path().to_path_buf(),
    };
    println!(
        "workpool-testcluster: a TEST STAND-IN for Kubernetes (in-memory API server, no auth), not a real cluster."
    );
    if args.no_kubelet {
        println!("  No kubelet: pods are stored but never run.");
    } else {
        println!(
            "  Process kubelet on node {}: pods run as local processes (no containers, no isolation).",
            args.node
        );
        for line in &image_lines {
            println!("{line}");
        }
    }
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
