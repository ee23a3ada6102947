//! A trivial scheduler: binds unscheduled pods (default scheduler) to this node through
//! the `pods/{name}/binding` subresource, when they fit the node's allocatable cpu,
//! memory and pod count (otherwise PodScheduled=False/Unschedulable, retried).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::KubeletConfig;
use super::env::parse_quantity;
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

/// What a pod asks of a node (`resourcehelper.PodRequests`): per resource, the larger of
/// the containers' sum and the largest init container, plus overhead. A container's
/// request defaults to its limit. Returns (cpu in millicores, memory in bytes).
pub fn pod_requests(pod: &Pod) -> (f64, f64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0.0, 0.0);
    };
    let one = |c: &k8s_openapi::api::core::v1::Container, res: &str| -> f64 {
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(res))
            .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(res)));
        q.and_then(|q| parse_quantity(&q.0).ok()).unwrap_or(0.0)
    };
    let mut out = [0.0f64; 2];
    for (i, res) in ["cpu", "memory"].into_iter().enumerate() {
        let sum: f64 = spec.containers.iter().map(|c| one(c, res)).sum();
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| one(c, res))
            .fold(0.0, f64::max);
        let overhead = spec
            .overhead
            .as_ref()
            .and_then(|m| m.get(res))
            .and_then(|q| parse_quantity(&q.0).ok())
            .unwrap_or(0.0);
        out[i] = sum.max(init) + overhead;
    }
    (out[0] * 1000.0, out[1])
}

/// The scheduler's NodeResourcesFit and pod-count checks against this node: the
/// reasons it does not fit (`Insufficient cpu`, `Insufficient memory`, `Too many pods`).
pub fn misfit(pod: &Pod, bound: &[Pod], cfg: &KubeletConfig) -> Vec<&'static str> {
    let active: Vec<&Pod> = bound
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let (cpu, mem) = pod_requests(pod);
    let (used_cpu, used_mem) = active
        .iter()
        .map(|p| pod_requests(p))
        .fold((0.0, 0.0), |(a, b), (c, m)| (a + c, b + m));
    let mut out = Vec::new();
    if cpu > 0.0 && used_cpu + cpu > cfg.node_cpu_millis as f64 {
        out.push("Insufficient cpu");
    }
    if mem > 0.0 && used_mem + mem > cfg.node_memory_bytes as f64 {
        out.push("Insufficient memory");
    }
    if active.len() + 1 > cfg.max_pods as usize {
        out.push("Too many pods");
    }
    out
}

/// Marks `pod` unschedulable as kube-scheduler does (PodScheduled=False, Unschedulable).
async fn mark_unschedulable(client: &Client, pod: &Pod, reasons: &[&str]) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let message = format!(
        "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
        reasons
            .iter()
            .map(|r| format!("1 {r}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let already = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(&message)
            })
        });
    if !already {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }]}});
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!(error = %e, pod = name, "could not mark the pod unschedulable");
        }
    }
    message
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
    let stream = watcher(
        api.clone(),
        watcher::Config::default().fields("spec.nodeName="),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(stream);
    // Pods that did not fit, retried as pods on the node finish or go.
    let mut unschedulable: BTreeMap<(String, String), Pod> = BTreeMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    loop {
        let pod = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = retry.tick() => {
                let Some((key, _)) = unschedulable.first_key_value() else { continue };
                let key = key.clone();
                let Some(old) = unschedulable.remove(&key) else { continue };
                let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
                match api.get_opt(&key.1).await {
                    Ok(Some(p)) if p.metadata.uid == old.metadata.uid => p,
                    Ok(_) => continue,
                    Err(_) => {
                        unschedulable.insert(key, old);
                        continue;
                    }
                }
            }
            n = stream.next() => match n {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "scheduler watch error");
                    continue;
                }
                None => return,
            },
        };
        if !wants(&pod, &node_labels) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let on_node = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name)))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let reasons = misfit(&pod, &on_node, &cfg);
        if !reasons.is_empty() {
            let message = mark_unschedulable(&client, &pod, &reasons).await;
            if !unschedulable.contains_key(&(ns.clone(), name.clone())) {
                events.send(EventReq {
                    object: pod_ref(&pod, None),
                    warning: true,
                    reason: "FailedScheduling".into(),
                    message,
                    component: DEFAULT_SCHEDULER,
                });
            }
            unschedulable.insert((ns, name), pod);
            continue;
        }
        unschedulable.remove(&(ns.clone(), name.clone()));
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

    #[test]
    fn resource_fit() {
        let cfg = KubeletConfig::new("n", super::super::ImageMap::new(), "/tmp/x");
        let pod = |cpu: &str, mem: &str, phase: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}],
                         "initContainers": [{"name": "i", "resources": {"limits": {"cpu": "3"}}}]},
                "status": {"phase": phase},
            }))
            .expect("pod")
        };
        // The init container's limit (its request by default) dominates.
        assert_eq!(pod_requests(&pod("1", "1Mi", None)).0, 3000.0);
        assert!(misfit(&pod("1", "1Mi", None), &[], &cfg).is_empty());
        assert_eq!(
            misfit(&pod("500", "1Mi", None), &[], &cfg),
            ["Insufficient cpu"]
        );
        let busy = vec![pod("1", "1Mi", Some("Running"))];
        assert_eq!(
            misfit(&pod("1", "1Mi", None), &busy, &cfg),
            ["Insufficient cpu"]
        );
        let done = vec![pod("1", "1Mi", Some("Succeeded"))];
        assert!(misfit(&pod("1", "1Mi", None), &done, &cfg).is_empty());
        assert_eq!(
            misfit(&pod("1", "1000Gi", None), &[], &cfg),
            ["Insufficient memory"]
        );
    }
}
