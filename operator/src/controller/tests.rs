//! The reconcile against a mocked API server: given a pool, its pods and its queue, the
//! controller sends exactly these requests, in this order.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use workpool_worker::queue::DrainState;

use super::*;
use crate::fixtures::{self, running_pod, set_queue, stats, status_error};
use crate::hub::Command;
use kube::runtime::reflector;

const NS: &str = "ns";

fn pods_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods")
}

fn pool_path(name: &str) -> String {
    format!("/apis/workpool.dev/v1alpha1/namespaces/{NS}/workpools/{name}")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Answers a status patch with the pool carrying that status; returns the status.
fn answer_status(s: fixtures::Sent, wp: &WorkPool) -> Value {
    let status = s.body["status"].clone();
    let mut obj = serde_json::to_value(wp).expect("json");
    obj["status"] = status.clone();
    s.answer(200, obj);
    status
}

#[tokio::test]
async fn a_new_pool_gets_its_finalizer_and_nothing_else() {
    let mut wp = (*fixtures::pool(NS, "p", json!({}))).clone();
    wp.metadata.finalizers = None;
    let wp = Arc::new(wp);
    let (ctx, mut api) = fixtures::context(vec![]);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let s = api.expect(Method::PATCH, &pool_path("p")).await;
    assert!(
        s.body.to_string().contains(FINALIZER),
        "a JSON patch adding the finalizer: {}",
        s.body
    );
    let mut with = serde_json::to_value(&*wp).expect("json");
    with["metadata"]["finalizers"] = json!([FINALIZER]);
    s.answer(200, with);
    assert!(task.await.expect("join").is_ok());
    api.nothing_more().await;
}

#[tokio::test]
async fn missing_pods_are_created_then_the_status_written_then_events_told() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 2}));
    let (ctx, mut api) = fixtures::context(vec![]);
    set_queue(&ctx, &wp, stats(&[], &[]), 1);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    for _ in 0..2 {
        let s = api.expect(Method::POST, &pods_path()).await;
        assert_eq!(s.body["metadata"]["labels"]["workpool.dev/pool"], "p");
        assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], "uid-p");
        // Created idle: no annotation patch follows once it runs.
        assert_eq!(
            s.body["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "true"
        );
        s.echo();
    }
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    assert!(s.query.contains("fieldManager=workpool-operator") && s.query.contains("force=true"));
    assert_eq!(s.body["apiVersion"], "workpool.dev/v1alpha1");
    let status = answer_status(s, &wp);
    assert_eq!(status["desiredReplicas"], 2);
    assert_eq!(condition(&status, "Scaling")["reason"], "ScalingUp");
    api.event(NS, "Scaled").await;
    api.event(NS, "PodsCreated").await;
    let action = task.await.expect("join").expect("reconciled");
    assert!(action != Action::await_change());
    api.nothing_more().await;
}

#[tokio::test]
async fn nothing_is_written_while_nothing_changes() {
    let wp0 = fixtures::pool(NS, "p", json!({"replicas": 2}));
    let pods = vec![running_pod(&wp0, "p-bbbbb"), running_pod(&wp0, "p-ccccc")];
    let (ctx, mut api) = fixtures::context(pods.clone());
    set_queue(&ctx, &wp0, stats(&[("p-bbbbb", 0)], &[]), 1);
    let task = tokio::spawn(reconcile(wp0.clone(), ctx.clone()));
    // First look: both pods are idle as they were created (safe to evict): no pod
    // write, only the status.
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    let status = answer_status(s, &wp0);
    api.event(NS, "Scaled").await;
    task.await.expect("join").expect("reconciled");
    api.nothing_more().await;

    // The same world again, as the API now has it: not one request.
    let mut wp = (*wp0).clone();
    wp.status = Some(serde_json::from_value(status).expect("status"));
    let pods: Vec<Pod> = pods
        .into_iter()
        .map(|mut p| {
            p.metadata.annotations.get_or_insert_default().insert(
                "cluster-autoscaler.kubernetes.io/safe-to-evict".into(),
                "true".into(),
            );
            p
        })
        .collect();
    let (ctx, mut api) = fixtures::context(pods);
    set_queue(&ctx, &wp, stats(&[("p-bbbbb", 0)], &[]), 1);
    reconcile(Arc::new(wp), ctx).await.expect("reconciled");
    api.nothing_more().await;
}

#[tokio::test]
async fn a_scale_in_drains_the_idle_pod_and_deletes_it_only_once_it_stopped_holding_nothing() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 1}));
    let mut pods = vec![running_pod(&wp, "p-bbbbb"), running_pod(&wp, "p-ccccc")];
    // Their annotations already say what they are.
    for (p, busy) in pods.iter_mut().zip([false, true]) {
        let a = p.metadata.annotations.get_or_insert_default();
        a.insert(
            "cluster-autoscaler.kubernetes.io/safe-to-evict".into(),
            (if busy { "false" } else { "true" }).into(),
        );
        if busy {
            a.insert("karpenter.sh/do-not-disrupt".into(), "true".into());
            a.insert(
                "controller.kubernetes.io/pod-deletion-cost".into(),
                "2".into(),
            );
        }
    }
    let (ctx, mut api) = fixtures::context(pods);
    set_queue(&ctx, &wp, stats(&[("p-bbbbb", 0), ("p-ccccc", 3)], &[]), 1);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    let status = answer_status(s, &wp);
    assert_eq!(
        (
            status["replicas"].clone(),
            status["drainingReplicas"].clone()
        ),
        (json!(1), json!(1))
    );
    let ev = api.event(NS, "Draining").await;
    assert!(
        ev["note"]
            .as_str()
            .unwrap_or_default()
            .contains("p-bbbbb (0 tasks)"),
        "{ev}"
    );
    api.event(NS, "Scaled").await;
    task.await.expect("join").expect("reconciled");
    api.nothing_more().await;
    assert_eq!(
        ctx.hub.take_commands(),
        vec![(
            ("ns".into(), "p".into()),
            Command::Drain(vec!["p-bbbbb".into()])
        )],
        "the drain goes to Redis, no pod is deleted yet"
    );

    // A snapshot older than the request changes nothing; one taken after it, showing the
    // worker stopped and holding nothing, deletes the pod (conditional on its uid).
    let mut wp2 = (*wp).clone();
    wp2.status = Some(serde_json::from_value(status).expect("status"));
    let wp2 = Arc::new(wp2);
    let later = crate::observe::now_ms() + 60_000;
    set_queue(
        &ctx,
        &wp2,
        stats(
            &[("p-bbbbb", 0), ("p-ccccc", 3)],
            &[("p-bbbbb", DrainState::Stopped)],
        ),
        later,
    );
    let task = tokio::spawn(reconcile(wp2.clone(), ctx.clone()));
    let s = api
        .expect(Method::DELETE, &format!("{}/p-bbbbb", pods_path()))
        .await;
    assert_eq!(s.body["preconditions"]["uid"], "uid-p-bbbbb");
    s.answer(200, fixtures::pod_json("p-bbbbb"));
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    let status = answer_status(s, &wp2);
    assert_eq!(status["drainingReplicas"], 0);
    api.event(NS, "PodsDeleted").await;
    task.await.expect("join").expect("reconciled");
    api.nothing_more().await;
}

#[tokio::test]
async fn a_refused_create_is_told_with_a_stable_message_and_the_pool_backs_off() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 3}));
    let (ctx, mut api) = fixtures::context(vec![]);
    set_queue(&ctx, &wp, stats(&[], &[]), 1);
    let refuse = |s: fixtures::Sent| {
        let name = s.body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let msg = format!(
            "pods \"{name}\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
        );
        s.answer(403, status_error(403, "Forbidden", &msg));
    };
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    refuse(api.expect(Method::POST, &pods_path()).await);
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    let status = answer_status(s, &wp);
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "PodCreateFailed");
    let msg = degraded["message"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("pods \"p-*\" is forbidden: exceeded quota"),
        "{msg}"
    );
    api.event(NS, "Scaled").await;
    api.event(NS, "PodCreateFailed").await;
    let err = task
        .await
        .expect("join")
        .expect_err("the refusal is an error");
    assert_eq!(err.metric_label(), "quota");
    assert!(err.to_string().starts_with("create pod ns/p: "), "{err}");
    let first = error_policy(wp.clone(), &err, ctx.clone());
    let second = error_policy(wp.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)), "backs off");

    // With the status the API now has, within the back-off (a pod event, a queue read):
    // no create, and the status, still saying the refusal, is not written.
    let mut wp2 = (*wp).clone();
    wp2.status = Some(serde_json::from_value(status).expect("status"));
    let wp2 = Arc::new(wp2);
    reconcile(wp2.clone(), ctx.clone())
        .await
        .expect("held back, not failed");
    api.nothing_more().await;

    // Past the back-off: another random pod name is refused, the status is the same, so
    // it is not written.
    ctx.with_memory(&key_of(&wp), |m| {
        if let Some(r) = m.create_refused.as_mut() {
            r.retry_at_ms = 0;
        }
    });
    let task = tokio::spawn(reconcile(wp2, ctx.clone()));
    refuse(api.expect(Method::POST, &pods_path()).await);
    let s = api.next().await;
    assert!(
        s.path
            .starts_with(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")),
        "only the Event: {} {}",
        s.method,
        s.path
    );
    s.echo();
    assert!(task.await.expect("join").is_err());
    api.nothing_more().await;
}

#[tokio::test]
async fn a_replica_that_does_not_lead_sends_nothing() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 3}));
    let (ctx, mut api) = fixtures::context_with(vec![], ControllerConfig::default(), |c| {
        c.with_leadership(crate::leader::Leadership::lost())
    });
    set_queue(&ctx, &wp, stats(&[], &[]), 1);
    let err = reconcile(wp.clone(), ctx.clone())
        .await
        .expect_err("not leading");
    assert!(matches!(err, Error::NotLeader));
    // Tried again soon (a late renewal); a replica that lost the Lease stops its controller.
    assert_eq!(
        error_policy(wp, &err, ctx.clone()),
        Action::requeue(NOT_LEADING_RETRY)
    );
    api.nothing_more().await;
    assert!(ctx.hub.take_commands().is_empty());
}

#[tokio::test]
async fn a_pool_gone_mid_reconcile_leaves_no_series_and_no_memory() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 1}));
    let (ctx, _api) = fixtures::context(vec![]);
    ctx.forget(&key_of(&wp));
    let gone = kube::core::Status::failure("workpools \"p\" not found", "NotFound").with_code(404);
    let err = Error::api("apply status", "ns/p", kube::Error::Api(gone.boxed()));
    assert_eq!(
        error_policy(wp.clone(), &err, ctx.clone()),
        Action::await_change()
    );
    assert!(!ctx.remembers(&key_of(&wp)), "memory came back");
    let body = ctx.metrics.render();
    assert!(!body.contains("workpool=\"p\""), "{body}");
}

#[tokio::test]
async fn a_paused_pool_creates_nothing_and_says_so() {
    let wp = fixtures::pool(NS, "p", json!({"replicas": 3, "paused": true}));
    let (ctx, mut api) = fixtures::context(vec![]);
    set_queue(&ctx, &wp, stats(&[], &[]), 1);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let s = api
        .expect(Method::PATCH, &format!("{}/status", pool_path("p")))
        .await;
    let status = answer_status(s, &wp);
    assert_eq!(condition(&status, "Scaling")["reason"], "Paused");
    task.await.expect("join").expect("reconciled");
    api.nothing_more().await;
}

#[tokio::test]
async fn deletion_removes_the_pods_first_and_releases_the_finalizer_once_they_are_gone() {
    let mut wp = (*fixtures::pool(NS, "p", json!({}))).clone();
    wp.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let wp = Arc::new(wp);
    let pod = running_pod(&wp, "p-bbbbb");
    let (ctx, mut api) = fixtures::context(vec![pod]);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let s = api
        .expect(Method::DELETE, &format!("{}/p-bbbbb", pods_path()))
        .await;
    s.answer(200, fixtures::pod_json("p-bbbbb"));
    let err = task.await.expect("join").expect_err("waits for the pods");
    assert!(matches!(err, Error::CleanupWaits { .. }), "{err}");
    assert_eq!(
        error_policy(wp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5)),
        "looked at again soon, no back-off"
    );

    // Pods gone, Redis unreachable, the cleanup timeout over: the finalizer goes anyway,
    // with a Warning, and the pool is forgotten.
    let config = ControllerConfig {
        cleanup_timeout: Duration::ZERO,
        ..ControllerConfig::default()
    };
    let (ctx, mut api) = fixtures::context_with(vec![], config, |c| c);
    let task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let ev = api.event(NS, "CleanupSkipped").await;
    assert!(
        ev["note"].as_str().unwrap_or_default().contains("gave up"),
        "{ev}"
    );
    let s = api.expect(Method::PATCH, &pool_path("p")).await;
    assert!(
        s.body.to_string().contains("remove"),
        "a JSON patch removing the finalizer: {}",
        s.body
    );
    let mut gone = serde_json::to_value(&*wp).expect("json");
    gone["metadata"]["finalizers"] = json!([]);
    s.answer(200, gone);
    assert_eq!(
        task.await.expect("join").expect("released"),
        Action::await_change()
    );
    assert!(!ctx.remembers(&("ns".into(), "p".into())));
    api.nothing_more().await;
}

/// Drives a reconcile to its end: answers the status patch with the pool carrying that
/// status and Events with themselves; returns the statuses written.
async fn reconcile_answering(
    wp: Arc<WorkPool>,
    ctx: Arc<Context>,
    api: &mut fixtures::Verifier,
) -> Vec<Value> {
    // `ctx` is kept here: its client outlives the reconcile.
    let mut task = tokio::spawn(reconcile(wp.clone(), ctx.clone()));
    let mut written = Vec::new();
    loop {
        tokio::select! {
            biased;
            r = &mut task => {
                r.expect("join").expect("reconciled");
                return written;
            }
            s = api.next() => {
                if s.path.ends_with("/status") {
                    written.push(answer_status(s, &wp));
                } else {
                    assert!(s.path.ends_with("/events"), "unexpected {} {}", s.method, s.path);
                    s.echo();
                }
            }
        }
    }
}

#[tokio::test]
async fn a_status_written_is_not_undone_by_a_pool_read_from_before_that_write() {
    let annotated = |mut p: Pod| {
        p.metadata.annotations.get_or_insert_default().insert(
            "cluster-autoscaler.kubernetes.io/safe-to-evict".into(),
            "true".into(),
        );
        p
    };
    let wp0 = fixtures::pool(NS, "p", json!({"replicas": 2}));
    let ready = [
        annotated(running_pod(&wp0, "p-bbbbb")),
        annotated(running_pod(&wp0, "p-ccccc")),
    ];
    let mut not_ready = ready[1].clone();
    not_ready.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0,
                                   "image": "w", "imageID": "", "state": {"running": {}}}]
        }))
        .expect("status"),
    );
    // The status of two ready pods, as an earlier reconcile wrote it.
    let (ctx, mut api) = fixtures::context(ready.to_vec());
    set_queue(&ctx, &wp0, stats(&[], &[]), 1);
    let all_ready = reconcile_answering(wp0.clone(), ctx, &mut api)
        .await
        .pop()
        .expect("a status");
    assert_eq!(condition(&all_ready, "Ready")["status"], "True");
    let mut stale = (*wp0).clone();
    stale.status = Some(serde_json::from_value(all_ready).expect("status"));
    let stale = Arc::new(stale);

    // This process's cache: one pod turns not ready, then ready again, while the cached
    // pool still carries the status from before the first of these writes.
    let (store, mut writer) = reflector::store::<CachedPod>();
    let feed = |w: &mut reflector::store::Writer<CachedPod>, pods: &[&Pod]| {
        w.apply_watcher_event(&watcher::Event::Init);
        for p in pods {
            w.apply_watcher_event(&watcher::Event::InitApply(CachedPod::from_pod(p)));
        }
        w.apply_watcher_event(&watcher::Event::InitDone);
    };
    feed(&mut writer, &[&ready[0], &not_ready]);
    let (ctx, mut api) = fixtures::context_with(vec![], ControllerConfig::default(), |mut c| {
        c.pods = store.clone();
        c
    });
    set_queue(&ctx, &wp0, stats(&[], &[]), 1);
    let one_ready = reconcile_answering(stale.clone(), ctx.clone(), &mut api).await;
    assert_eq!(one_ready.len(), 1, "1/2 ready is written");
    assert_eq!(condition(&one_ready[0], "Ready")["status"], "False");
    feed(&mut writer, &[&ready[0], &ready[1]]);
    let again = reconcile_answering(stale, ctx, &mut api).await;
    assert_eq!(
        again.len(),
        1,
        "2/2 ready equals the cached pool's status, not the one written last: written"
    );
    assert_eq!(condition(&again[0], "Ready")["status"], "True");
    api.nothing_more().await;
}

/// Without a Secret watch: each Secret a reconcile has read is read again (metadata only)
/// every period, one read however many pools name it; only a Secret that now reads
/// otherwise triggers, and only the pools naming it.
#[tokio::test]
async fn a_polled_secret_triggers_only_its_pools_and_only_when_it_changed() {
    let secret_pool = |name: &str, secret: &str| {
        fixtures::pool(
            NS,
            name,
            json!({"queue": {"redis": {"urlSecretRef": {"name": secret, "key": "url"}}}}),
        )
    };
    let pools = [
        secret_pool("a", "s"),
        secret_pool("b", "s"),
        secret_pool("never-read", "t"),
        fixtures::pool(NS, "plain", json!({})),
    ];
    let (ctx, mut api) = fixtures::context(vec![]);
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in &pools {
        writer.apply_watcher_event(&watcher::Event::InitApply((**p).clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // A reconcile read Secret "s" at resourceVersion 1; none has read "t" yet.
    ctx.targets.read(NS, "s", "1");
    let polls = secret_polls(
        ctx.client.clone(),
        store,
        ctx.clone(),
        Duration::from_millis(200),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut polls = std::pin::pin!(polls);
        while let Some(r) = polls.next().await {
            let _ = tx.send(r.name);
        }
    });
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/s");
    let metadata = |rv: &str| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "s", "namespace": NS, "resourceVersion": rv}})
    };
    // Unchanged for two periods: one read of "s" each, nothing triggered.
    for _ in 0..2 {
        api.expect(Method::GET, &secret_path)
            .await
            .answer(200, metadata("1"));
    }
    // Rotated: both pools naming it, and no other.
    api.expect(Method::GET, &secret_path)
        .await
        .answer(200, metadata("2"));
    let mut triggered = Vec::new();
    for _ in 0..2 {
        let name = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a trigger within 5 s")
            .expect("stream alive");
        triggered.push(name);
    }
    triggered.sort();
    assert_eq!(triggered, ["a", "b"]);
    assert!(rx.try_recv().is_err(), "only the pools naming the Secret");
    assert_eq!(
        ctx.with_memory(&(NS.to_string(), "a".to_string()), |m| m.read_reason),
        Some("secret"),
        "the triggered reconcile reads the queue afresh"
    );
    // Deleted: the pools are triggered again (their reconcile then says so).
    ctx.targets.read(NS, "s", "2");
    api.expect(Method::GET, &secret_path).await.answer(
        404,
        status_error(404, "NotFound", "secrets \"s\" not found"),
    );
    let name = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a trigger within 5 s")
        .expect("stream alive");
    assert!(name == "a" || name == "b");
    task.abort();
}
