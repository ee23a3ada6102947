//! core/v1 Events, sent in the background with a few retries (best effort).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

pub struct EventReq {
    pub object: ObjectReference,
    pub warning: bool,
    pub reason: String,
    pub message: String,
    pub component: &'static str,
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<EventReq>,
}

impl EventSink {
    pub fn send(&self, req: EventReq) {
        let _ = self.tx.send(req);
    }

    /// An event about a pod (optionally one of its containers), from the kubelet.
    pub fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        self.send(EventReq {
            object: pod_ref(pod, container),
            warning,
            reason: reason.to_string(),
            message,
            component: "kubelet",
        });
    }
}

pub fn pod_ref(pod: &Pod, container: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: container.map(|c| format!("spec.containers{{{c}}}")),
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Start the sender task; it ends when every [`EventSink`] is dropped.
pub fn start(client: Client, host: String) -> (EventSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<EventReq>();
    let task = tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let ns = req
                .object
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string());
            let now = Timestamp::now();
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "{}.{:x}{:04x}",
                req.object.name.as_deref().unwrap_or("object"),
                now.as_nanosecond(),
                seq & 0xffff
            );
            let ev = Event {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                involved_object: req.object,
                reason: Some(req.reason),
                message: Some(req.message),
                type_: Some(if req.warning { "Warning" } else { "Normal" }.into()),
                source: Some(EventSource {
                    component: Some(req.component.into()),
                    host: Some(host.clone()),
                }),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                // Legacy-style event (like the kubelet's recorder): no eventTime.
                event_time: None,
                count: Some(1),
                reporting_component: Some(req.component.into()),
                reporting_instance: Some(host.clone()),
                action: None,
                related: None,
                series: None,
            };
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            for attempt in 0..4u32 {
                match api.create(&PostParams::default(), &ev).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 || s.code == 403 => {
                        tracing::debug!(reason = ?ev.reason, code = s.code, "event not recorded");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "event create failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
        }
    });
    (EventSink { tx }, task)
}
