//! The operator runs with only the RBAC it documents (`operator/rbac.yaml`), through a
//! ServiceAccount token, not as cluster-admin; without those rights it exits with a
//! message saying which, against the real API server (RBAC enforced, tokens from the
//! TokenRequest API).
#![forbid(unsafe_code)]

mod operator_support;

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams};
use operator_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_works_with_exactly_the_documented_rbac() {
    let env = Env::start().await;
    let ns = env.ns.clone();
    // A ServiceAccount with nothing bound: the operator refuses to start, saying why.
    env.cluster
        .apply_object(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": ns}}))
        .await
        .expect("sa");
    let kc = env
        .cluster
        .service_account_kubeconfig(&ns, "nobody")
        .await
        .expect("token");
    let mut op =
        Operator::start_with_kubeconfig(&env.cluster, &kc, "op-nobody", &["--namespace", &ns]);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = op.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the operator runs without rights"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    op.child = None;
    assert!(!status.success());
    assert!(op.log_text().contains("RBAC forbids"), "{}", op.log_text());

    // The documented rights, bound to a ServiceAccount.
    env.cluster
        .apply_object(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "workpool-operator", "namespace": ns}}))
        .await
        .expect("sa");
    let kc = documented_rbac(&env, "workpool-operator").await;
    let op = Operator::start_with_kubeconfig(&env.cluster, &kc, "op-rbac", &[]);

    // Everything the operator does: pods, status, finalizer, Secret, Events, cleanup.
    env.cluster
        .apply_object(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "redis-url", "namespace": ns},
            "stringData": {"url": env.redis_url()}
        }))
        .await
        .expect("secret");
    env.apply_pool(&env.exec_pool(
        "least",
        2,
        0.0,
        json!({"queue": {"redis": {"url": null, "urlSecretRef": {"name": "redis-url"}}}}),
    ))
    .await;
    env.wait_ready("least", 2).await;
    let t = payloads("least", 10);
    env.submit("least", &t);
    env.wait_done("least", &t, T).await;
    env.pools()
        .patch(
            "least",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale");
    env.wait_ready("least", 1).await;
    let events =
        kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), &ns);
    let evs = events
        .list(&Default::default())
        .await
        .expect("events")
        .items;
    assert!(
        evs.iter()
            .any(|e| e.reporting_controller.as_deref() == Some("workpool-operator")),
        "the operator could not publish events"
    );
    env.pools()
        .delete("least", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the pool is gone", T, || async {
        env.pool("least").await.is_none().then_some(())
    })
    .await;
    assert!(
        // (Not "403": that also matches port numbers and timestamps in the log.)
        !op.log_text().to_lowercase().contains("forbidden"),
        "forbidden requests:\n{}",
        op.log_text()
    );
}
