//! `workpool-testcluster`: runs the test Kubernetes cluster for people (kubectl, the
//! operator, `make sandbox`, the chart tests) until SIGINT/SIGTERM: the real control plane
//! (etcd, kube-apiserver, controller manager, scheduler built from Kubernetes' source) and
//! one real node (kubelet, containerd and runc, CNI bridge, kube-proxy, CoreDNS, a default
//! StorageClass), with our images built from our binaries. Where the real node cannot run
//! here it says what is missing and exits 2; it never falls back to a simulation.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use workpool_tests::cluster::repo_root;
use workpool_tests::controlplane::{self, ControlPlane, ControlPlaneOptions};
use workpool_tests::node::{self, Node, NodeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "workpool-testcluster",
    about = "Runs the workpool test cluster: a real Kubernetes control plane and a real node (kubelet, containerd, runc), built on this machine"
)]
struct Args {
    /// Where to write the cluster-admin kubeconfig, once the node is Ready (default: it
    /// stays in the cluster's temporary directory; the path is printed). Removed on exit.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directories of YAML manifests (CRDs) to apply at start; default `<repo>/crds`.
    #[arg(long = "crds")]
    crds: Vec<PathBuf>,
    /// Apply no CRDs at start (e.g. for `helm install`, which installs the chart's own and
    /// refuses to adopt one it did not create).
    #[arg(long, conflicts_with = "crds")]
    no_crds: bool,
    /// The node's name.
    #[arg(long, default_value = "node-1")]
    node: String,
    /// An image built from a local program, under exactly this reference (`:latest` when
    /// no tag; pods then need `imagePullPolicy: IfNotPresent`, nothing is pulled): the
    /// program as its entrypoint, with the libraries it links. IMAGE=PATH, repeatable.
    /// Our worker, operator and redis images are always there (built from target/).
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
    // Everything it needs, checked before anything starts.
    let missing = controlplane::unavailable_reason().or_else(node::unavailable_reason);
    if let Some(reason) = missing {
        eprintln!("workpool-testcluster: cannot run the real cluster here: {reason}");
        eprintln!(
            "  (make deps installs what is missing; without root, use kind: make kind, tests/kind/)"
        );
        std::process::exit(2);
    }
    for (image, path) in &args.images {
        if !path.is_file() {
            eprintln!(
                "workpool-testcluster: --image {image}={}: no such file",
                path.display()
            );
            std::process::exit(2);
        }
    }
    run(&args).await
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

/// The control plane and its node; the kubeconfig is written only once the node is Ready.
async fn run(args: &Args) -> Result<()> {
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
    let cp = std::sync::Arc::new(cp);
    let mut options = NodeOptions::new().name(&args.node);
    let mut image_lines = Vec::new();
    for (image, path) in &args.images {
        options = options.image(image, path);
        image_lines.push(format!("  image {image}: {}", path.display()));
    }
    let started = cp.clone();
    let node = tokio::task::spawn_blocking(move || -> Result<Node> {
        let node = Node::start(&started, options)?;
        node::addons::install(&started)?;
        Ok(node)
    })
    .await
    .context("starting the real node")??;
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
        controlplane::kubernetes_version().unwrap_or_default()
    );
    println!(
        "  The node {} is real: kubelet, containerd and runc, CNI bridge, kube-proxy, CoreDNS.",
        node.name()
    );
    println!(
        "  Images: our worker, operator and redis, built from target/; pods reach this machine at {}.",
        node.host_ip()
    );
    for line in &image_lines {
        println!("{line}");
    }
    println!("  API:        {}", cp.server_url());
    println!("  kubeconfig: {} (cluster admin)", kubeconfig.display());
    println!("  logs:       {}/*.log", cp.dir().display());
    println!(
        "  node dir:   {} (logs: *.log; network namespace {})",
        node.dir().display(),
        node.netns()
    );
    println!("Try:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes,namespaces");
    println!("Stop with Ctrl-C (SIGINT) or SIGTERM.");
    wait_for_stop().await?;
    println!("workpool-testcluster: stopping");
    if let Some(p) = &args.kubeconfig {
        let _ = std::fs::remove_file(p);
    }
    tokio::task::spawn_blocking(move || drop(node)).await.ok();
    tokio::task::spawn_blocking(move || drop(cp)).await.ok();
    Ok(())
}
