//! A trivial scheduler: binds unscheduled pods (default scheduler) to this node through
//! the `pods/{name}/binding` subresource.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::KubeletConfig;
use super::events::{EventReq, EventSink, pod_ref};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Whether this scheduler should bind `pod` to a node with `node_labels`.
pub fn wants(pod: &Pod, node_labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if spec
        .scheduler_name
        .as_deref()
        .is_some_and(|s| !s.is_empty() && s != DEFAULT_SCHEDULER)
    {
        return false;
    }
    spec.node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node_labels.get(k) == Some(v))
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let mut attempt = 0u32;
    loop {
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                // Already bound (409) or gone (404). A 404 can also mean the API server
                // does not serve pods/binding, which is worth a loud message.
                if s.code == 404 {
                    tracing::warn!(pod = name, message = %s.message, "binding returned 404 (pod gone, or pods/binding not served)");
                }
                return Err(kube::Error::Api(s));
            }
            Err(e) if attempt < 8 => {
                tracing::debug!(error = %e, pod = name, "binding failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Watch unscheduled pods and bind them to this node until cancelled.
pub async fn run(
    client: Client,
    cfg: Arc<KubeletConfig>,
    events: EventSink,
    node_labels: BTreeMap<String, String>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default().fields("spec.nodeName="))
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            n = stream.next() => n,
        };
        let pod = match next {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "scheduler watch error");
                continue;
            }
            None => return,
        };
        if !wants(&pod, &node_labels) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        match bind(&client, &pod, &cfg.node_name).await {
            Ok(()) => events.send(EventReq {
                object: pod_ref(&pod, None),
                warning: false,
                reason: "Scheduled".into(),
                message: format!("Successfully assigned {ns}/{name} to {}", cfg.node_name),
                component: DEFAULT_SCHEDULER,
            }),
            Err(e) => tracing::debug!(error = %e, pod = %name, "pod not bound"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn selection() {
        let labels: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        let with = |f: &dyn Fn(&mut PodSpec)| {
            let mut spec = PodSpec::default();
            f(&mut spec);
            Pod {
                spec: Some(spec),
                ..Default::default()
            }
        };
        let sel = |v: &str| Some([("disk".to_string(), v.to_string())].into());
        assert!(wants(&with(&|_| {}), &labels));
        assert!(!wants(
            &with(&|s| s.scheduler_name = Some("other".into())),
            &labels
        ));
        assert!(wants(
            &with(&|s| s.scheduler_name = Some(DEFAULT_SCHEDULER.into())),
            &labels
        ));
        assert!(!wants(&with(&|s| s.node_selector = sel("hdd")), &labels));
        assert!(wants(&with(&|s| s.node_selector = sel("ssd")), &labels));
        assert!(!wants(&with(&|s| s.node_name = Some("n".into())), &labels));
        let mut deleting = with(&|_| {});
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(!wants(&deleting, &labels));
    }
}
