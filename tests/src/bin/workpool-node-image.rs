//! Builds an OCI image from a program on this machine (the program, the libraries it
//! links, `/etc/passwd` with user 65532, `/tmp`) and either writes it as an OCI layout
//! tarball or imports it into a containerd (namespace `k8s.io`).
//!
//! ```text
//! workpool-node-image [--containerd SOCKET | --out DIR] IMAGE=PATH... [--redis IMAGE]...
//! ```
#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use workpool_tests::node::images::{ImageSpec, redis_image};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut containerd: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut specs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--containerd" => containerd = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--redis" => specs.push(redis_image(&args.next().context("--redis IMAGE")?)?),
            other => {
                let (image, path) = other
                    .split_once('=')
                    .with_context(|| format!("expected IMAGE=PATH, got {other}"))?;
                specs.push(ImageSpec::for_program(image, &PathBuf::from(path))?);
            }
        }
    }
    if specs.is_empty() {
        bail!(
            "usage: workpool-node-image [--containerd SOCKET | --out DIR] IMAGE=PATH... [--redis IMAGE]"
        );
    }
    for spec in specs {
        match (&containerd, &out) {
            (Some(sock), _) => {
                let dir = tempfile::tempdir()?;
                spec.import(sock, dir.path())?;
                println!("imported {}", spec.reference());
            }
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir)?;
                let file = dir.join(format!(
                    "{}.oci.tar",
                    spec.reference().replace(['/', ':'], "_")
                ));
                let digest = spec.build(&file)?;
                println!("{} {} {}", spec.reference(), digest, file.display());
            }
            (None, None) => bail!("give --containerd SOCKET or --out DIR"),
        }
    }
    Ok(())
}
