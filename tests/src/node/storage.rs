//! Local-path storage for real nodes, as kind has it: a default StorageClass `standard`
//! (`WaitForFirstConsumer`, reclaim `Delete`) and a small provisioner per node.
//!
//! The scheduler picks a node for a pod with an unbound claim of this class and marks the
//! claim with `volume.kubernetes.io/selected-node`; the provisioner of that node creates a
//! `hostPath` PersistentVolume in the node's directory (mode 0777, so any pod user can
//! write), bound to the claim and pinned to the node; the PV controller binds them. A
//! released volume is deleted with its directory. The provisioner polls every second with
//! `kubectl` (the test cluster is small).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The provisioner name of the `standard` StorageClass.
pub const PROVISIONER: &str = "workpool.dev/local-path";
/// The default StorageClass's name (kind's).
pub const STORAGE_CLASS: &str = "standard";

/// The default StorageClass.
pub fn storage_class_manifest() -> String {
    format!(
        r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {STORAGE_CLASS}
  annotations: {{storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: {PROVISIONER}
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
"#
    )
}

/// A running provisioner for one node; stops on drop.
pub(crate) struct Provisioner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Provisioner {
    pub(crate) fn start(
        kubectl: PathBuf,
        kubeconfig: PathBuf,
        node: String,
        dir: PathBuf,
    ) -> Provisioner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("provisioner-{node}"))
            .spawn(move || {
                let p = Pass {
                    kubectl,
                    kubeconfig,
                    node,
                    dir,
                };
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = p.run() {
                        tracing::debug!("local-path provisioner of {}: {e:#}", p.node);
                    }
                    for _ in 0..10 {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .ok();
        Provisioner { stop, thread }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Pass {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    node: String,
    dir: PathBuf,
}

impl Pass {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .arg("--request-timeout=10s");
        let out = match stdin {
            None => cmd.output()?,
            Some(input) => {
                let file = self.dir.join(".pv.json");
                std::fs::write(&file, input)?;
                cmd.arg("-f").arg(&file).output()?
            }
        };
        if !out.status.success() {
            bail!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn run(&self) -> Result<()> {
        let claims: Value =
            serde_json::from_str(&self.kubectl(&["get", "pvc", "-A", "-o", "json"], None)?)?;
        for claim in claims["items"].as_array().into_iter().flatten() {
            if let Some(pv) = volume_for(claim, &self.node, &self.dir) {
                let path = pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default();
                std::fs::create_dir_all(path)?;
                set_mode(Path::new(path), 0o777)?;
                self.kubectl(&["create"], Some(&pv.to_string()))
                    .context("creating a PersistentVolume")?;
            }
        }
        let volumes: Value = serde_json::from_str(&self.kubectl(
            &[
                "get",
                "pv",
                "-l",
                &format!("workpool.dev/local-path-node={}", self.node),
                "-o",
                "json",
            ],
            None,
        )?)?;
        for pv in volumes["items"].as_array().into_iter().flatten() {
            let phase = pv["status"]["phase"].as_str().unwrap_or_default();
            if phase == "Released" || phase == "Failed" {
                let name = pv["metadata"]["name"].as_str().unwrap_or_default();
                self.kubectl(&["delete", "pv", name, "--wait=false"], None)?;
                if let Some(path) = pv["spec"]["hostPath"]["path"].as_str()
                    && Path::new(path).starts_with(&self.dir)
                {
                    let _ = std::fs::remove_dir_all(path);
                }
            }
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The PersistentVolume to create for `claim` on `node`, when it is a pending claim of the
/// `standard` class whose pod the scheduler put on `node`.
fn volume_for(claim: &Value, node: &str, dir: &Path) -> Option<Value> {
    let meta = &claim["metadata"];
    let spec = &claim["spec"];
    if spec["storageClassName"].as_str() != Some(STORAGE_CLASS)
        || claim["status"]["phase"].as_str() != Some("Pending")
        || spec["volumeName"].as_str().is_some_and(|v| !v.is_empty())
        || meta["annotations"]["volume.kubernetes.io/selected-node"].as_str() != Some(node)
    {
        return None;
    }
    let uid = meta["uid"].as_str()?;
    let name = format!("pvc-{uid}");
    let storage = spec["resources"]["requests"]["storage"]
        .as_str()
        .unwrap_or("1Gi");
    let access_modes = if spec["accessModes"].is_array() {
        spec["accessModes"].clone()
    } else {
        json!(["ReadWriteOnce"])
    };
    Some(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {"workpool.dev/local-path-node": node},
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": uid,
            },
            "hostPath": {"path": dir.join("pv").join(&name), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: Option<&str>, phase: &str) -> Value {
        let mut c = json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u-1", "annotations": {}},
            "spec": {"storageClassName": "standard", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "2Gi"}}},
            "status": {"phase": phase},
        });
        if let Some(n) = node {
            c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!(n);
        }
        c
    }

    #[test]
    fn a_pending_claim_for_this_node_gets_a_bound_host_path_volume() {
        let pv = volume_for(&claim(Some("n1"), "Pending"), "n1", Path::new("/x")).unwrap();
        assert_eq!(pv["metadata"]["name"], "pvc-u-1");
        assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "u-1");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/x/pv/pvc-u-1");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
                [0],
            "n1"
        );
    }

    #[test]
    fn claims_of_other_nodes_bound_claims_and_unscheduled_claims_are_left_alone() {
        assert!(volume_for(&claim(Some("n2"), "Pending"), "n1", Path::new("/x")).is_none());
        assert!(volume_for(&claim(None, "Pending"), "n1", Path::new("/x")).is_none());
        assert!(volume_for(&claim(Some("n1"), "Bound"), "n1", Path::new("/x")).is_none());
    }
}
