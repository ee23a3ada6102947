//! Helpers for tests that run pods through a kubelet: wait for a pod state, find ports.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;

/// Poll the pod until `pred` holds (or fail after `timeout` with the last state seen).
pub async fn wait_pod(
    api: &Api<Pod>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<Pod> = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(p)) => {
                if pred(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            Ok(None) => last = None,
            Err(e) => tracing::debug!(error = %e, "get pod failed while waiting"),
        }
        if tokio::time::Instant::now() >= deadline {
            let status = last
                .and_then(|p| p.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_else(|| "<pod absent>".into());
            anyhow::bail!("pod {name}: timed out waiting for {what}; last status: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll until the pod object is gone.
pub async fn wait_pod_gone(api: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(None) = api.get_opt(name).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("pod {name} still exists after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn condition(p: &Pod, type_: &str) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.clone())
}

pub fn is_ready(p: &Pod) -> bool {
    condition(p, "Ready").as_deref() == Some("True")
}

pub fn container_status<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
}

pub fn waiting_reason(p: &Pod, container: &str) -> Option<String> {
    container_status(p, container)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
}

/// A free TCP port (see [`workpool_worker::testing::free_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(workpool_worker::testing::free_port()?)
}
