//! A mocked Kubernetes API for unit tests of the reconcile (as kube-rs' controller-rs
//! does it): the test gets every request the controller sends, in order, checks it and
//! answers it. "Given this pool, these pods and this queue, the controller sends exactly
//! these requests." The queue side is a detached [`QueueHub`]: snapshots set by the
//! test, commands recorded.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::controller::{Context, ControllerConfig};
use crate::crd::WorkPool;
use crate::hub::{QueueHub, Snapshot};
use crate::metrics::Metrics;
use workpool_worker::queue::{ConsumerInfo, DrainState, QueueStats};

/// The other end of the mocked API server.
pub struct Verifier {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

/// One request the controller sent.
pub struct Sent {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Sent {
    /// Answers with `code` and `body`.
    pub fn answer(self, code: u16, body: Value) {
        let resp = Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.respond.send_response(resp);
    }

    /// Answers 200 with the body sent (what a server echoes for a create or patch).
    pub fn echo(self) {
        let body = self.body.clone();
        self.answer(200, body);
    }
}

/// A minimal pod object (an answer to a pod patch or delete).
pub fn pod_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}})
}

/// A Kubernetes `Status` error body.
pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message, "metadata": {}})
}

impl Verifier {
    /// The next request (fails the test if none comes within 5 s).
    pub async fn next(&mut self) -> Sent {
        let (req, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("a request within 5 s")
                .expect("the client is alive");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json body")
        };
        Sent {
            method,
            path,
            query,
            body,
            respond,
        }
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Sent {
        let s = self.next().await;
        assert_eq!(
            (&s.method, s.path.as_str()),
            (&method, path),
            "unexpected request; body: {}",
            s.body
        );
        s
    }

    /// The next request must publish an Event with `reason`; answered.
    pub async fn event(&mut self, ns: &str, reason: &str) -> Value {
        let s = self.next().await;
        assert_eq!(
            s.method,
            Method::POST,
            "an Event, got {} {}",
            s.method,
            s.path
        );
        assert_eq!(
            s.path,
            format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")
        );
        assert_eq!(s.body["reason"], reason, "event {}", s.body);
        let body = s.body.clone();
        s.echo();
        body
    }

    /// No request follows within 300 ms.
    pub async fn nothing_more(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(300), self.handle.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// A context whose client talks to the returned [`Verifier`], with `pods` in its pod
/// cache, a detached hub and inline Events.
pub fn context(pods: Vec<Pod>) -> (Arc<Context>, Verifier) {
    context_with(pods, ControllerConfig::default(), |c| c)
}

/// [`context`] with settings, and a last change to the context (leadership, ...).
pub fn context_with(
    pods: Vec<Pod>,
    config: ControllerConfig,
    adjust: impl FnOnce(Context) -> Context,
) -> (Arc<Context>, Verifier) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "workpool-operator".into(),
            instance: Some("test".into()),
        },
    );
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::InitApply(
            crate::podcache::CachedPod::from_pod(&p),
        ));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context::new(
        client,
        recorder,
        Metrics::new().expect("metrics"),
        store,
        QueueHub::detached(),
        config,
    )
    .with_inline_events();
    (Arc::new(adjust(ctx)), Verifier { handle })
}

/// A pool `name` in namespace `ns` (uid `uid-<name>`, generation 1, with the finalizer),
/// spec merged with `spec`.
pub fn pool(ns: &str, name: &str, spec: Value) -> Arc<WorkPool> {
    let mut base = json!({
        "queue": {"redis": {"url": "redis://127.0.0.1:1/0"}},
        "replicas": 1,
        "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}}
    });
    merge(&mut base, spec);
    let wp: WorkPool = serde_json::from_value(json!({
        "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "generation": 1, "resourceVersion": "1",
                     "finalizers": [crate::controller::FINALIZER]},
        "spec": base
    }))
    .expect("pool");
    Arc::new(wp)
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A running, ready pod of `wp` built from its current template, named `name`.
pub fn running_pod(wp: &WorkPool, name: &str) -> Pod {
    let mut p = crate::pods::build_pod(wp, name).expect("pod");
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("time"),
    ));
    p.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "worker", "ready": true, "restartCount": 0,
                                   "image": "w", "imageID": "",
                                   "state": {"running": {}}}]
        }))
        .expect("status"),
    );
    p
}

/// Queue stats: consumers holding the given tasks, drains as given.
pub fn stats(held: &[(&str, u64)], drains: &[(&str, DrainState)]) -> QueueStats {
    let pending = held.iter().map(|h| h.1).sum();
    QueueStats {
        stream_exists: true,
        group_exists: true,
        pending,
        backlog: pending,
        consumers: held
            .iter()
            .map(|(n, p)| ConsumerInfo {
                name: n.to_string(),
                pending: *p,
                idle_ms: 0,
                inactive_ms: None,
            })
            .collect(),
        draining: drains.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        ..Default::default()
    }
}

/// Sets the pool's queue snapshot, taken at `taken_ms`.
pub fn set_queue(ctx: &Context, wp: &WorkPool, st: QueueStats, taken_ms: u64) {
    let key = crate::decide::key_of(wp);
    ctx.hub.set_snapshot(
        &key,
        Snapshot {
            result: Ok(st),
            taken_ms,
            seq: taken_ms,
        },
    );
}
