//! Node registration, status heartbeats and the node Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::KubeletConfig;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn resources(cfg: &KubeletConfig) -> BTreeMap<String, Quantity> {
    [
        ("cpu", format!("{}m", cfg.node_cpu_millis)),
        ("memory", format!("{}", cfg.node_memory_bytes)),
        ("pods", format!("{}", cfg.max_pods)),
        ("ephemeral-storage", "20Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

fn node_object(cfg: &KubeletConfig) -> Node {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(cfg.node_labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            annotations: Some(
                [(
                    "workpool.dev/process-kubelet".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: None,
        status: None,
    }
}

fn node_status(cfg: &KubeletConfig, ready_since: Timestamp, now: Timestamp) -> serde_json::Value {
    let cond = |t: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: t.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    let conditions = vec![
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status (process kubelet)",
        ),
    ];
    let info = NodeSystemInfo {
        architecture: arch().into(),
        boot_id: String::new(),
        container_runtime_version: "process://0.1.0".into(),
        kernel_version: String::new(),
        kube_proxy_version: String::new(),
        kubelet_version: "v1.32.0-workpool-process-kubelet".into(),
        machine_id: cfg.node_name.clone(),
        operating_system: "linux".into(),
        os_image: "process kubelet (workpool test control plane)".into(),
        system_uuid: cfg.node_name.clone(),
        swap: None,
    };
    json!({
        "capacity": resources(cfg),
        "allocatable": resources(cfg),
        "conditions": conditions,
        "addresses": [
            NodeAddress { type_: "InternalIP".into(), address: super::env::POD_IP.into() },
            NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() },
        ],
        "nodeInfo": info,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "phase": "Running",
    })
}

/// Create the Node (or adopt an existing one with the same name) and post its status.
pub async fn register(client: &Client, cfg: &KubeletConfig) -> anyhow::Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let mut last_err = None;
    for attempt in 0..20u32 {
        let res = match api.create(&PostParams::default(), &node_object(cfg)).await {
            Ok(n) => Ok(n),
            Err(kube::Error::Api(s)) if s.code == 409 => api.get(&cfg.node_name).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(n) => {
                let now = Timestamp::now();
                post_status(client, cfg, now, now).await?;
                return Ok(n.metadata.uid.unwrap_or_default());
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "node registration failed; retrying");
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
            }
        }
    }
    Err(anyhow::anyhow!(
        "could not register node {}: {}",
        cfg.node_name,
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn post_status(
    client: &Client,
    cfg: &KubeletConfig,
    ready_since: Timestamp,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let body = json!({ "status": node_status(cfg, ready_since, now) });
    let mut attempt = 0u32;
    loop {
        match api
            .patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 => {
                tracing::debug!(error = %e, "node status update failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn renew_lease(
    client: &Client,
    cfg: &KubeletConfig,
    node_uid: &str,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let patch = json!({"spec": {"holderIdentity": cfg.node_name, "renewTime": now}});
    match api
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: cfg.node_name.clone(),
                            uid: node_uid.to_string(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.node_name.clone()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Post node status and renew the Lease every `interval` until cancelled.
pub async fn heartbeat(
    client: Client,
    cfg: std::sync::Arc<KubeletConfig>,
    node_uid: String,
    cancel: CancellationToken,
) {
    let ready_since = Timestamp::now();
    let mut lease_warned = false;
    loop {
        if let Err(e) = renew_lease(&client, &cfg, &node_uid).await
            && !lease_warned
        {
            // Leases are optional for this kubelet (the namespace may not exist).
            tracing::debug!(error = %e, "node lease not renewed");
            lease_warned = true;
        }
        if let Err(e) = post_status(&client, &cfg, ready_since, Timestamp::now()).await {
            tracing::warn!(error = %e, "node status heartbeat failed");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.node_status_interval) => {}
        }
    }
}
