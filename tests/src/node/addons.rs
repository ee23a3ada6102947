//! Cluster add-ons for real nodes: the cluster DNS (CoreDNS built from its Go module by
//! `scripts/coredns-bin.sh`, image [`super::COREDNS_IMAGE`], imported by every node).
//!
//! CoreDNS runs as a DaemonSet behind the `kube-dns` Service at [`super::CLUSTER_DNS`]
//! with `internalTrafficPolicy: Local`: each node's network namespace is joined only to
//! the host, not to other nodes, so a pod asks the CoreDNS of its own node. It serves
//! `cluster.local` (and reverse zones) only: there is no `forward` plugin, since nothing
//! may be resolved outside the machine; other names get SERVFAIL. It listens on 1053
//! (the Service maps 53 to it), so it runs as the image's non-root user without
//! capabilities.

use super::{CLUSTER_DNS, COREDNS_IMAGE};
use crate::controlplane::ControlPlane;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The CoreDNS configuration: cluster zones only, health on 8080, readiness on 8181.
pub const COREFILE: &str = ".:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loop
    reload
    loadbalance
}
";

/// The manifests of the cluster DNS (kube-system): ServiceAccount, ClusterRole and
/// binding, ConfigMap with the Corefile, DaemonSet, Service `kube-dns`.
pub fn cluster_dns_manifests() -> String {
    let corefile: String = COREFILE.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects:
- {{kind: ServiceAccount, name: coredns, namespace: kube-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
{corefile}---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-node-critical
      dnsPolicy: Default
      tolerations:
      - operator: Exists
      securityContext: {{runAsNonRoot: true}}
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: IfNotPresent
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {{name: dns, containerPort: 1053, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 1053, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          periodSeconds: 10
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        volumeMounts:
        - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  clusterIP: {CLUSTER_DNS}
  internalTrafficPolicy: Local
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, targetPort: 1053, protocol: UDP}}
  - {{name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}}
"#
    )
}

/// Applies the cluster DNS to `cp` (idempotent: server-side apply). Needs the CoreDNS
/// binary (`scripts/coredns-bin.sh`); nodes import its image when it is built.
pub fn install_cluster_dns(cp: &ControlPlane) -> Result<()> {
    if super::coredns_binary().is_none() {
        bail!("CoreDNS is not built (run scripts/coredns-bin.sh)");
    }
    apply(cp, "cluster-dns.yaml", &cluster_dns_manifests())
}

/// Applies the default StorageClass `standard` (local-path volumes provisioned by each
/// node, see [`super::storage`]).
pub fn install_storage(cp: &ControlPlane) -> Result<()> {
    apply(
        cp,
        "storage-class.yaml",
        &super::storage::storage_class_manifest(),
    )
}

/// Both add-ons: [`install_cluster_dns`] and [`install_storage`].
pub fn install(cp: &ControlPlane) -> Result<()> {
    install_cluster_dns(cp)?;
    install_storage(cp)
}

pub(crate) fn apply(cp: &ControlPlane, file: &str, manifests: &str) -> Result<()> {
    let path = cp.dir().join(file);
    std::fs::write(&path, manifests)?;
    let out = Command::new(cp.bin_dir().join("kubectl"))
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&path)
        .output()
        .context("running kubectl apply")?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_dns_manifests_are_yaml_with_the_kube_dns_service_at_its_address() {
        let docs: Vec<serde_json::Value> =
            serde_yaml::Deserializer::from_str(&cluster_dns_manifests())
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .collect();
        assert_eq!(docs.len(), 6);
        let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        assert_eq!(cm["data"]["Corefile"].as_str().unwrap(), COREFILE);
    }
}
