//! `workpool-testcluster`: runs a test Kubernetes cluster for people (kubectl, the
//! operator) until SIGINT/SIGTERM: by default the real control plane (etcd,
//! kube-apiserver, controller manager, scheduler built from Kubernetes' source) with the
//! process kubelet as its node; with `--api double` the in-memory API server double.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use workpool_tests::cluster::{ClusterOptions, TestCluster, client_for, repo_root};
use workpool_tests::controlplane::{ControlPlane, ControlPlaneOptions};
use workpool_tests::kubelet::{ImageMap, Kubelet, KubeletConfig};
use workpool_tests::node::{Node, NodeOptions};

/// The worker image our chart and examples use; mapped to the locally built binary.
const WORKER_IMAGE: &str = "ghcr.io/workpool-dev/workpool-worker";

#[derive(Parser, Debug)]
#[command(
    name = "workpool-testcluster",
    about = "Runs the workpool test cluster: a real Kubernetes control plane with a process kubelet (or, with --api double, an in-memory stand-in)"
)]
struct Args {
    /// Which API server: `real` (Kubernetes built from source by scripts/k8s-bin.sh) or
    /// `double` (the in-memory stand-in).
    #[arg(long, default_value = "real", value_parser = ["real", "double"])]
    api: String,
    /// Loopback port of the API double (0 = any free port; the real one picks its own).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write a kubeconfig for this server (default: a temporary file).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directories of YAML manifests (CRDs) to apply at start; default `<repo>/crds`.
    #[arg(long = "crds")]
    crds: Vec<PathBuf>,
    /// Apply no CRDs at start (e.g. for `helm install`, which installs the chart's own and
    /// refuses to adopt one it did not create).
    #[arg(long, conflicts_with = "crds")]
    no_crds: bool,
    /// Events kept for watch resumption by the double (older versions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// The node of the real control plane: `process` (the process kubelet: containers
    /// are local processes sharing the host) or `real` (kubelet + containerd + runc + CNI,
    /// kube-proxy, CoreDNS and local-path storage; images built from local binaries; needs
    /// root and the packages `make deps` installs).
    #[arg(long = "node-kind", default_value = "process", value_parser = ["process", "real"])]
    node_kind: String,
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
    if args.api == "real" {
        return run_real(&args).await;
    }
    let mut opts = ClusterOptions {
        port: args.port,
        ..ClusterOptions::default()
    };
    opts.server.history_limit = args.history;
    if args.no_crds {
        opts.manifest_dirs = Vec::new();
    } else if !args.crds.is_empty() {
        opts.manifest_dirs = args.crds.clone();
    } else {
        opts.manifest_dirs = vec![repo_root().join("crds")];
    }
    // Always the double, even when WORKPOOL_E2E_KUBECONFIG names a real cluster.
    let mut cluster = TestCluster::start_double(opts).await?;
    let mut image_lines = Vec::new();
    if !args.no_kubelet {
        let images = image_map(&args, &mut image_lines);
        let work_dir = cluster.temp_dir().join("kubelet");
        cluster.server().add_kubelet_log_dir(work_dir.clone());
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
    wait_for_stop().await?;
    println!("workpool-testcluster: stopping");
    drop(cluster);
    Ok(())
}

async fn wait_for_stop() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The worker image mapped to the local build, plus `--image` mappings.
fn image_map(args: &Args, lines: &mut Vec<String>) -> ImageMap {
    let mut images = ImageMap::new();
    let mut mapped: Vec<(String, PathBuf)> = vec![(
        WORKER_IMAGE.to_string(),
        repo_root().join("target/debug/workpool-worker"),
    )];
    mapped.extend(args.images.iter().cloned());
    for (image, path) in &mapped {
        images = images.with(image, path);
        lines.push(format!("  image {image} -> {}", path.display()));
    }
    images
}

/// The real control plane with the process kubelet as node `--node`. The kubeconfig
/// (cluster admin) is written only once the node is Ready.
async fn run_real(args: &Args) -> Result<()> {
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default()))
        .await
        .context("starting the control plane")??;
    let dirs = if args.no_crds {
        Vec::new()
    } else if args.crds.is_empty() {
        vec![repo_root().join("crds")]
    } else {
        args.crds.clone()
    };
    for dir in &dirs {
        let has_yaml = std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "yaml" || x == "yml")
            })
        });
        if has_yaml {
            let dir = dir.to_string_lossy().into_owned();
            cp.kubectl(&[
                "apply",
                "--server-side",
                "--field-manager=workpool-testcluster",
                "-f",
                &dir,
            ])
            .with_context(|| format!("applying {dir}"))?;
        }
    }
    let mut image_lines = Vec::new();
    let mut kubelet = None;
    let cp = std::sync::Arc::new(cp);
    let mut real_node = None;
    if !args.no_kubelet && args.node_kind == "real" {
        let mut options = NodeOptions::new().name(&args.node);
        for (image, path) in &args.images {
            options = options.image(image, path);
            image_lines.push(format!("  image {image}: {}", path.display()));
        }
        let started = cp.clone();
        let node = tokio::task::spawn_blocking(move || -> Result<Node> {
            let node = Node::start(&started, options)?;
            workpool_tests::node::addons::install(&started)?;
            Ok(node)
        })
        .await
        .context("starting the real node")??;
        image_lines.push(format!(
            "  node logs under {}; images: our worker, operator and redis, built from target/",
            node.dir().display()
        ));
        real_node = Some(node);
    } else if !args.no_kubelet {
        let images = image_map(args, &mut image_lines);
        let work_dir = cp.dir().join("kubelet");
        let node_kubeconfig =
            cp.kubeconfig_for_user(&format!("system:node:{}", args.node), &["system:nodes"])?;
        let config = KubeletConfig::new(args.node.clone(), images, work_dir.clone());
        kubelet = Some(
            Kubelet::start(client_for(&node_kubeconfig).await?, config)
                .await
                .context("starting the process kubelet")?,
        );
        image_lines.push(format!("  container logs under {}", work_dir.display()));
        cp.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{}", args.node),
            "--timeout=120s",
        ])
        .context("waiting for the node to be Ready")?;
    }
    let kubeconfig = match &args.kubeconfig {
        Some(p) => {
            let text = std::fs::read_to_string(cp.admin_kubeconfig())?;
            // Written whole at once: a watcher never sees half a file.
            let tmp = p.with_extension("partial");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, p)?;
            std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())
        }
        None => cp.admin_kubeconfig().to_path_buf(),
    };
    println!(
        "workpool-testcluster: a real Kubernetes control plane ({}) built from source, on this machine.",
        workpool_tests::controlplane::kubernetes_version().unwrap_or_default()
    );
    if args.no_kubelet {
        println!("  No kubelet: pods are scheduled nowhere and stay Pending.");
    } else if real_node.is_some() {
        println!(
            "  The node {} is real: kubelet, containerd and runc, CNI bridge, kube-proxy, CoreDNS.",
            args.node
        );
        for line in &image_lines {
            println!("{line}");
        }
    } else {
        println!(
            "  The node {} is SIMULATED by the process kubelet: pods run as local processes (no containers, no isolation).",
            args.node
        );
        for line in &image_lines {
            println!("{line}");
        }
    }
    println!("  API:        {}", cp.server_url());
    println!("  kubeconfig: {} (cluster admin)", kubeconfig.display());
    println!("  logs:       {}/*.log", cp.dir().display());
    println!("Try:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes,namespaces");
    println!("Stop with Ctrl-C (SIGINT) or SIGTERM.");
    wait_for_stop().await?;
    println!("workpool-testcluster: stopping");
    if let Some(k) = kubelet {
        k.shutdown().await;
    }
    if let Some(node) = real_node {
        tokio::task::spawn_blocking(move || drop(node)).await.ok();
    }
    if let Some(p) = &args.kubeconfig {
        let _ = std::fs::remove_file(p);
    }
    drop(cp);
    Ok(())
}
